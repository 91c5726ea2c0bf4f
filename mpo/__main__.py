"""``python -m mpo``: the ``mpo`` command (:func:`mpo.cli.main`)."""


def run() -> int:
    from mpo.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
