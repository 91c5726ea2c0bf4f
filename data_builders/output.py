"""Writing pairs in the MMPR layout that ``mpo train`` (:func:`mpo.data.mmpr.load_mmpr`) reads as is.

``DIR/meta.json`` lists one subset per (input subset, pair kind), e.g. ``synthetic_qa_correctness``
and ``synthetic_qa_format``; each has ``DIR/<subset>.jsonl``. Images are referenced, not copied:
the subset's ``root`` is the input subset's image folder, relative to DIR (``--image-root
relative``, the default: DIR and the data move together) or absolute. With ``copy_images`` the
referenced images are copied under ``DIR/images/<input subset>/`` and the root points there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from mpo.atomic import atomic_write

IMAGE_ROOTS = ("relative", "absolute")


def _copy_target(path: str) -> str:
    """Where an image path of a row goes under the copied root (absolute paths get a unique name)."""
    if os.path.isabs(path) or ".." in Path(path).parts:
        digest = hashlib.sha1(path.encode()).hexdigest()[:12]
        return f"external/{digest}_{Path(path).name}"
    return path


def write_mmpr(
    out: Path,
    rows: dict[str, list[dict]],
    sources: dict[str, dict],
    *,
    copy_images: bool = False,
    image_root: str = "relative",
) -> dict:
    """Write ``rows`` (output subset -> MMPR lines) and meta.json; returns the meta written.

    ``sources[subset]`` gives ``{"root": absolute image folder of the input, "max_dynamic_patch",
    "input_subset"}``. Subsets without rows are left out of meta.json.
    """
    out = Path(out)
    meta: dict[str, dict] = {}
    for name in sorted(rows):
        lines = rows[name]
        if not lines:
            continue
        src = sources[name]
        root = Path(src["root"])
        if copy_images:
            copied_root = Path("images") / src["input_subset"]
            lines = [dict(line) for line in lines]
            for line in lines:
                for key in ("image", "video"):  # a video is one file or a list of frame files
                    if key not in line:
                        continue
                    paths = line[key] if isinstance(line[key], list) else [line[key]]
                    targets = [_copy_target(p) for p in paths]
                    for p, t in zip(paths, targets, strict=True):
                        dest = out / copied_root / t
                        if not dest.exists():
                            dest.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(root / p, dest)
                    line[key] = targets if isinstance(line[key], list) else targets[0]
            root_field = copied_root.as_posix()
        elif image_root == "absolute":
            root_field = str(root.resolve())
        else:
            root_field = os.path.relpath(root.resolve(), out.resolve())
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        atomic_write(out / f"{name}.jsonl", text)
        meta[name] = {
            "root": root_field,
            "annotation": f"{name}.jsonl",
            "repeat_time": 1.0,
            "max_dynamic_patch": src["max_dynamic_patch"],
            "data_augment": False,
            **{k: src[k] for k in ("min_num_frame", "max_num_frame") if k in src},
            "length": len(lines),
        }
    atomic_write(out / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta
