"""The synthetic visual task: layout of the files, and every answer re-derived from the pixels."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import operator
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from random import Random

import pytest
from conftest import REPO
from PIL import Image

from data_builders import synthetic
from data_builders.synthetic import COLOURS, COT_INSTRUCTION, chance_accuracy, generate
from mpo.cli import main as cli_main
from mpo.data.template import normalize_question

N = 60
SKILLS = {"colour", "count", "position", "shape", "compare", "multi_image", "arithmetic"}
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."
TSV_COLUMNS = [
    "index",
    "image_path",
    "question",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "difficulty",
    "reasoning",
]
BACKGROUND = (255, 255, 255)
NAME_OF_RGB = {rgb: name for name, rgb in COLOURS.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic") / "out"
    return out, generate(out, N, None, None, seed=3)


# ------------------------------------------------------------------ reading the scene from pixels


def blobs(path: Path | Image.Image) -> list[dict]:
    """Connected components (8-neighbourhood) of non-background pixels, with colour, size, box, shape."""
    image = path.convert("RGB") if isinstance(path, Image.Image) else Image.open(path).convert("RGB")
    width, height = image.size
    px = image.load()
    seen = [[False] * height for _ in range(width)]
    found = []
    for x0 in range(width):
        for y0 in range(height):
            if seen[x0][y0] or px[x0, y0] == BACKGROUND:
                continue
            colour = px[x0, y0]
            assert colour in NAME_OF_RGB, f"{path}: unexpected pixel colour {colour}"
            stack, pixels = [(x0, y0)], set()
            seen[x0][y0] = True
            while stack:
                x, y = stack.pop()
                pixels.add((x, y))
                for dx in (-1, 0, 1):
                    for dy in (-1, 0, 1):
                        u, v = x + dx, y + dy
                        if 0 <= u < width and 0 <= v < height and not seen[u][v] and px[u, v] != BACKGROUND:
                            assert px[u, v] == colour, f"{path}: two colours touch at {(u, v)}"
                            seen[u][v] = True
                            stack.append((u, v))
            xs, ys = [p[0] for p in pixels], [p[1] for p in pixels]
            box = (min(xs), min(ys), max(xs), max(ys))
            found.append(
                {
                    "colour": NAME_OF_RGB[colour],
                    "pixels": len(pixels),
                    "cx": (box[0] + box[2]) / 2,
                    "cy": (box[1] + box[3]) / 2,
                    "kind": classify(pixels, box),
                }
            )
    return found


def classify(pixels: set, box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    if (x0, y0) in pixels and (x1, y0) in pixels:
        return "square"
    if all((x, y1) in pixels for x in range(x0, x1 + 1)):
        return "triangle"  # a flat full-width base, pointed top
    fill = len(pixels) / ((x1 - x0 + 1) * (y1 - y0 + 1))
    return "circle" if fill > 0.65 else "diamond"


def evaluate(expr: str) -> int:
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

    def walk(node):
        if isinstance(node, ast.BinOp):
            return ops[type(node.op)](walk(node.left), walk(node.right))
        assert isinstance(node, ast.Constant) and isinstance(node.value, int)
        return node.value

    return walk(ast.parse(expr, mode="eval").body)


def unique_max(values: dict) -> object:
    ranked = sorted(values.items(), key=lambda kv: -kv[1])
    assert len(ranked) == 1 or ranked[0][1] > ranked[1][1], f"no unique maximum in {values}"
    return ranked[0][0]


def truth(question: str, images: list[Path]) -> str:
    """The answer word/number of a core question, computed from the images alone."""
    scenes = [blobs(p) for p in images]
    shapes = scenes[0] if len(scenes) == 1 else None
    if m := re.fullmatch(r"What is ([0-9 +*-]+)\?", question):
        assert not images
        return str(evaluate(m[1]))
    if m := re.fullmatch(r"Which image has (more|the most) shapes\?", question):
        return f"Image-{unique_max({i + 1: len(s) for i, s in enumerate(scenes)})}"
    assert shapes is not None, question
    if question == "What is the colour of the shape?":
        assert len(shapes) == 1
        return shapes[0]["colour"]
    if question == "What is the colour of the largest shape?":
        return shapes[unique_max({i: s["pixels"] for i, s in enumerate(shapes)})]["colour"]
    if question == "How many shapes are there in the image?":
        return str(len(shapes))
    if m := re.fullmatch(r"How many (\w+) shapes are there in the image\?", question):
        return str(sum(s["colour"] == m[1] for s in shapes))
    if m := re.fullmatch(
        r"What shape is the (\w+most) one\?|What is the colour of the (\w+most) shape\?", question
    ):
        direction = m[1] or m[2]
        axis = "cx" if direction in ("leftmost", "rightmost") else "cy"
        sign = 1 if direction in ("rightmost", "bottommost") else -1
        ranked = sorted(shapes, key=lambda s: sign * s[axis], reverse=True)
        assert abs(ranked[0][axis] - ranked[1][axis]) >= 3, "extreme shape not clearly apart"
        return ranked[0]["kind"] if m[1] else ranked[0]["colour"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        matching = [s for s in shapes if s["colour"] == m[1]]
        assert len(matching) == 1
        return matching[0]["kind"]
    if m := re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", question):
        return "yes" if any(s["colour"] == m[1] and s["kind"] == m[2] for s in shapes) else "no"
    if m := re.fullmatch(r"Are there more (\w+) shapes than (\w+) shapes\?", question):
        counts = Counter(s["colour"] for s in shapes)
        return "yes" if counts[m[1]] > counts[m[2]] else "no"
    if question == "Which colour appears most often in the image?":
        return unique_max(Counter(s["colour"] for s in shapes))
    raise AssertionError(f"unknown question {question!r}")


def parse_prompt(prompt: str) -> tuple[str, int, dict[str, str], str]:
    """(core question, number of <image>, options, final instruction line) of a full prompt."""
    lines = prompt.split("\n")
    instruction = lines.pop()
    options = {}
    while lines and re.fullmatch(r"[A-D]\. .+", lines[-1]):
        letter, option = lines.pop().split(". ", 1)
        options[letter] = option
    options = dict(sorted(options.items()))
    core = [line for line in lines if not re.fullmatch(r"(Image-\d+: )?<image>", line)]
    assert len(core) == 1, prompt
    return core[0], prompt.count("<image>"), options, instruction


def check_answer(skill: str, core: str, images: list[Path], answer: str, options: dict[str, str]) -> None:
    expected = truth(core, images)
    if options:
        assert answer in options, (core, answer, options)
        assert list(options.values()).count(expected) == 1
        assert options[answer] == expected, (core, images, options, answer, expected)
    else:
        assert answer == expected, (core, images, answer, expected)


def check_reasoning(reasoning: str, images: list[Path]) -> bool | None:
    """A reference chain of thought (what the pair builder and `mpo eval` check responses against): no final
    answer in it, and the shapes it lists are the ones the pixels show, by colour, and by kind where it names
    kinds (all of them or none)."""
    assert reasoning.strip() and "Final answer" not in reasoning
    if len(images) == 1 and (listing := re.search(r"I see ([^.]+)\.", reasoning)):
        said = re.findall(r"an? (\w+) (shape|circle|square|triangle|diamond)\b", listing[1])
        shapes = blobs(images[0])
        if all(kind == "shape" for _, kind in said):
            assert Counter(c for c, _ in said) == Counter(b["colour"] for b in shapes), reasoning
        else:
            assert Counter(said) == Counter((b["colour"], b["kind"]) for b in shapes), reasoning
        return "shape" not in {kind for _, kind in said}
    return None


def image_list(value) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_tsv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        return list(reader.fieldnames), list(reader)


# ------------------------------------------------------------------------------------------ tests


def test_shape_reader_recognises_every_shape():
    for kind in synthetic.SHAPES:
        for size in range(8, 29):
            scene = synthetic.Scene(40, 40, (synthetic.Shape(kind, "red", 5, 6, size),))
            found = blobs(synthetic.render(scene))
            assert [(b["kind"], b["colour"], b["pixels"]) for b in found] == [
                (kind, "red", synthetic.shape_area(kind, size))
            ]


def test_meta_json_layout(data):
    out, counts = data
    assert counts["sft"] == N and counts["qa"] == N // 4 and counts["eval"] == N // 4
    for folder, name, annotation, n in (
        ("sft", "synthetic_sft", "train.jsonl", N),
        ("qa", "synthetic_qa", "qa.jsonl", N // 4),
    ):
        meta = json.loads((out / folder / "meta.json").read_text())
        assert meta == {
            name: {
                "root": f"../images/{folder}",
                "annotation": annotation,
                "repeat_time": 1,
                "max_dynamic_patch": 6,
                "data_augment": False,
                "length": n,
            }
        }
        entry = meta[name]
        root = out / folder / entry["root"]
        rows = read_jsonl(out / folder / entry["annotation"])
        assert len(rows) == n == entry["length"]
        for row in rows:
            for name_ in image_list(row.get("image")):
                assert (root / name_).is_file()


def test_sft_records_match_the_images(data):
    out, _ = data
    root = out / "images" / "sft"
    rows = read_jsonl(out / "sft" / "train.jsonl")
    for row in rows:
        assert set(row) >= {"id", "conversations", "skill", "difficulty", "format", "cot", "answer"}
        human, gpt = row["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        images = [root / p for p in image_list(row.get("image"))]
        core, n_placeholders, options, instruction = parse_prompt(human["value"])
        assert n_placeholders == len(images)
        if len(images) == 1:
            assert human["value"].startswith("<image>\n")
        assert options == row.get("choices", {})
        assert (row["format"] == "mc") == bool(options)
        if row["cot"]:
            assert instruction == COT_INSTRUCTION
            assert "\n" not in gpt["value"] and len(gpt["value"]) > len("Final answer: ") + 10
            m = re.search(r"Final answer: (.+)$", gpt["value"])
            assert m and m[1] == row["answer"]
        else:
            assert instruction == (MC_INSTRUCTION if options else SHORT_INSTRUCTION)
            assert gpt["value"] == row["answer"]
        check_answer(row["skill"], core, images, row["answer"], options)
    cot = [r["cot"] for r in rows]
    assert abs(sum(cot) - 0.3 * len(rows)) <= 1


def test_qa_records_match_the_images(data):
    out, _ = data
    root = out / "images" / "qa"
    listings = Counter()
    for row in read_jsonl(out / "qa" / "qa.jsonl"):
        assert set(row) >= {"id", "question", "answer", "skill", "difficulty"}
        images = [root / p for p in image_list(row.get("image"))]
        core, n_placeholders, options, instruction = parse_prompt(row["question"])
        assert n_placeholders == len(images)
        assert options == row.get("choices", {})
        assert instruction == (MC_INSTRUCTION if options else SHORT_INSTRUCTION)
        check_answer(row["skill"], core, images, row["answer"], options)
        kinds = check_reasoning(row["reasoning"], images)
        assert kinds is None or kinds == core.startswith("Is there"), (core, row["reasoning"])
        listings[kinds] += 1
    assert listings[False] > 0


def test_a_listing_names_the_kinds_only_where_the_question_turns_on_them(tmp_path):
    """Every skill and difficulty: its chain of thought lists what its scene holds (checked on the rendered
    image), by kind only for "Is there a red circle?"."""
    rng, listings = Random(7), Counter()
    for skill in synthetic.SKILLS:
        for d in (1, 2, 3):
            for k in range(3):
                item = synthetic.make_item(rng, skill, d, "eval")
                images = []
                for i, scene in enumerate(item.scenes):
                    synthetic.render(scene).save(path := tmp_path / f"{skill}-{d}-{k}-{i}.png")
                    images.append(path)
                kinds = check_reasoning(item.reasoning, images)
                assert kinds is None or kinds == item.question.startswith("Is there"), item
                listings[kinds] += 1
    assert listings[True] > 0 and listings[False] > 0


def test_eval_tsv_matches_the_images(data):
    out, _ = data
    columns, rows = read_tsv(out / "eval" / "eval.tsv")
    assert columns == TSV_COLUMNS
    assert len(rows) == N // 4
    assert [int(r["index"]) for r in rows] == list(range(len(rows)))
    multi, listings = 0, Counter()
    for row in rows:
        value = row["image_path"]
        paths = json.loads(value) if value.startswith("[") else [value] if value else []
        images = [out / "eval" / p for p in paths]
        assert all(p.is_file() for p in images)
        options = {k: row[k] for k in "ABCD" if row[k]}
        question = row["question"]
        if len(images) > 1:
            multi += 1
            assert question.count("<image>") == len(images)
        else:
            assert "<image>" not in question
        prompt = synthetic.build_question(question, len(images), options or None)
        core, n_placeholders, parsed, _ = parse_prompt(normalize_question(prompt, len(images)))
        assert n_placeholders == len(images) and parsed == options
        assert 1 <= int(row["difficulty"]) <= 3 and row["category"] in SKILLS
        check_answer(row["category"], core, images, row["answer"], options)
        kinds = check_reasoning(row["reasoning"], images)
        # a listing names the kinds only where the question turns on every shape's kind
        assert kinds is None or kinds == core.startswith("Is there"), (core, row["reasoning"])
        listings[kinds] += 1
    assert multi > 0 and listings[False] > 0


def test_every_skill_format_and_input_shape_present(data):
    out, _ = data
    sft = read_jsonl(out / "sft" / "train.jsonl")
    qa = read_jsonl(out / "qa" / "qa.jsonl")
    _, tsv = read_tsv(out / "eval" / "eval.tsv")
    for rows, skill_key in ((sft, "skill"), (qa, "skill"), (tsv, "category")):
        assert {r[skill_key] for r in rows} == SKILLS
    for rows in (sft, qa):
        assert {r["format"] for r in rows} == {"mc", "short"}
        assert {len(image_list(r.get("image"))) for r in rows} >= {0, 1, 2}
    assert {bool(r["A"]) for r in tsv} == {True, False}
    assert {r["difficulty"] for r in sft} == {1, 2, 3}
    assert {r["cot"] for r in sft} == {True, False}
    assert {(r["cot"], r["format"]) for r in sft} == {(c, f) for c in (True, False) for f in ("mc", "short")}
    assert {len(r["choices"]) for r in sft if "choices" in r} <= {2, 3, 4}
    for r in sft:
        for name in image_list(r.get("image")):
            with Image.open(out / "images" / "sft" / name) as image:
                assert image.size in synthetic.IMAGE_SIZES and max(image.size) <= 128


def test_splits_are_disjoint(data):
    out, _ = data
    digests: dict[str, set] = {}
    for split in ("sft", "qa", "eval"):
        files = sorted((out / "images" / split).glob("*.png"))
        assert files
        digests[split] = {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert not digests["sft"] & digests["qa"]
    assert not digests["sft"] & digests["eval"]
    assert not digests["qa"] & digests["eval"]
    text_only = {
        "sft": {
            r["conversations"][0]["value"].split("\n")[0]
            for r in read_jsonl(out / "sft" / "train.jsonl")
            if "image" not in r
        },
        "qa": {r["question"].split("\n")[0] for r in read_jsonl(out / "qa" / "qa.jsonl") if "image" not in r},
        "eval": {r["question"] for r in read_tsv(out / "eval" / "eval.tsv")[1] if not r["image_path"]},
    }
    assert all(text_only.values())
    assert not text_only["sft"] & text_only["qa"] and not text_only["sft"] & text_only["eval"]
    assert not text_only["qa"] & text_only["eval"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(data, tmp_path):
    out, _ = data
    again = tmp_path / "again"
    generate(again, N, None, None, seed=3)
    assert _tree(again) == _tree(out)
    other = tmp_path / "other"
    generate(other, N, None, None, seed=4)
    assert (other / "sft" / "train.jsonl").read_bytes() != (out / "sft" / "train.jsonl").read_bytes()
    assert (other / "eval" / "eval.tsv").read_bytes() != (out / "eval" / "eval.tsv").read_bytes()


# The digest of `generate(out, n_sft=40, seed=7)`: its file names, jsonl / json / tsv bytes and image pixels
# (pixels, not PNG bytes, so that another zlib does not move it). The demo's data, and so its numbers, stay
# byte-for-byte the same only while this does; a change that means to alter the data updates it.
PINNED_DIGEST = "b90f818c2d47572f64575d0f3ce56a4753cb57ac264e663d5ed0be6ddf3fcda7"


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(Image.open(path).convert("RGB").tobytes() if path.suffix == ".png" else path.read_bytes())
    return h.hexdigest()


def test_the_data_of_a_seed_is_pinned(tmp_path):
    generate(tmp_path, n_sft=40, seed=7)
    assert _digest(tmp_path) == PINNED_DIGEST


def test_runs_as_a_command(tmp_path):
    """`python -m mpo.cli synthetic` (what `mpo synthetic` runs) writes the splits and says what it wrote."""
    done = subprocess.run(
        [sys.executable, "-m", "mpo.cli", "synthetic", str(tmp_path / "m"), "--n", "8"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert done.stdout.startswith(f"mpo synthetic: wrote {tmp_path / 'm'}: sft 8, qa 2, eval 2")


def test_rerun_into_same_folder_leaves_no_stale_images(tmp_path):
    generate(tmp_path, 20, 4, 4, seed=0)
    generate(tmp_path, 10, 2, 2, seed=0)
    referenced = {n for r in read_jsonl(tmp_path / "sft" / "train.jsonl") for n in image_list(r.get("image"))}
    assert {p.name for p in (tmp_path / "images" / "sft").glob("*.png")} == referenced


def test_chance_accuracy(data):
    out, _ = data
    qa = read_jsonl(out / "qa" / "qa.jsonl")
    for row in qa:
        chance = chance_accuracy(row)
        if "choices" in row:
            assert chance == pytest.approx(1 / len(row["choices"]))
        else:
            assert 0 < chance <= 0.5
    assert chance_accuracy({"answer": "yes"}) == 0.5
    assert chance_accuracy({"answer": "red", "skill": "colour"}) == pytest.approx(1 / 6)
    assert chance_accuracy({"answer": "3", "skill": "count"}) == pytest.approx(1 / 6)
    assert chance_accuracy({"A": "x", "B": "y", "C": "", "D": "", "answer": "A"}) == 0.5
    assert 0 < chance_accuracy({"answer": "47", "category": "arithmetic", "difficulty": "3"}) < 0.02
    assert chance_accuracy({"answer": "Image-2", "question": "Image-1: <image>\nImage-2: <image>\nQ"}) == 0.5


def test_cli(tmp_path, capsys):
    assert cli_main(["synthetic", str(tmp_path / "cli"), "--n", "40"]) == 0
    printed = capsys.readouterr().out
    assert "sft 40" in printed and "qa 10" in printed and "eval 10" in printed and "arithmetic" in printed
    assert len(read_jsonl(tmp_path / "cli" / "sft" / "train.jsonl")) == 40
    assert cli_main(["synthetic", str(tmp_path / "bad"), "--n", "-1"]) == 1
    assert "--n must be >= 0" in capsys.readouterr().err


def test_skills_subset(tmp_path, capsys):
    out = tmp_path / "sub"
    assert cli_main(["synthetic", str(out), "--n", "60", "--skills", "shape,colour"]) == 0
    assert "per skill: colour " in capsys.readouterr().out
    sft = read_jsonl(out / "sft" / "train.jsonl")
    qa = read_jsonl(out / "qa" / "qa.jsonl")
    _, tsv = read_tsv(out / "eval" / "eval.tsv")
    assert (len(sft), len(qa), len(tsv)) == (60, 15, 15)
    for rows, key in ((sft, "skill"), (qa, "skill"), (tsv, "category")):
        assert {r[key] for r in rows} == {"colour", "shape"}
    # weights as in the full task: colour 0.16 : shape 0.13 of the SFT records
    assert Counter(r["skill"] for r in sft) == {
        "colour": round(60 * 16 / 29),
        "shape": 60 - round(60 * 16 / 29),
    }
    for row in sft:
        images = [out / "images" / "sft" / p for p in image_list(row.get("image"))]
        core, _, options, _ = parse_prompt(row["conversations"][0]["value"])
        check_answer(row["skill"], core, images, row["answer"], options)
    assert cli_main(["synthetic", str(tmp_path / "bad"), "--skills", "colour,taste"]) == 1
    assert "--skills: unknown skill(s) taste; choose from colour, count" in capsys.readouterr().err


def test_every_image_of_a_multi_image_item_belongs_to_its_split():
    # the splits are disjoint per image, not per item: one image may not turn up in two splits as part of
    # two different multi-image items (at 8000 records it did, before items were split by each scene)
    rng = Random(0)
    for split, buckets in synthetic.BUCKETS.items():
        for difficulty in (1, 2, 3):
            item = synthetic.make_item(rng, "multi_image", difficulty, split)
            assert len(item.scenes) >= 2
            assert all(synthetic.bucket(scene.key()) in buckets for scene in item.scenes)


def test_short_answers_on_one_tile(tmp_path, capsys):
    # the demo's task: open answers only (no option letters), every image a single 64 px tile
    out = tmp_path / "short"
    args = [
        "synthetic",
        str(out),
        "--n",
        "40",
        "--skills",
        "colour,count,position",
        "--formats",
        "short",
        "--max-tiles",
        "1",
    ]
    assert cli_main(args) == 0
    sft = read_jsonl(out / "sft" / "train.jsonl")
    _, tsv = read_tsv(out / "eval" / "eval.tsv")
    assert {r["format"] for r in sft} == {"short"} and not any("choices" in r for r in sft)
    assert all(r[letter] == "" for r in tsv for letter in "ABCD")
    assert all(
        r["answer"] in set(COLOURS) | set(synthetic.SHAPES) | {str(i) for i in range(1, 7)} for r in tsv
    )
    for split in ("sft", "qa", "eval"):
        for path in (out / "images" / split).glob("*.png"):
            with Image.open(path) as img:
                assert img.size == (64, 64), path
    # difficulties stay balanced within a skill when there is one format: 1, 2, 3 in turn
    counts = Counter((r["skill"], r["difficulty"]) for r in sft)
    for skill in ("colour", "count", "position"):
        per = [counts[(skill, d)] for d in (1, 2, 3)]
        assert max(per) - min(per) <= 1, (skill, per)
    assert synthetic.sizes_up_to(3) == ((64, 64), (128, 64), (64, 128))  # 2 tiles + thumbnail
    # every skill (`--scale long`) still has exact answers when all its shapes must fit one tile
    generate(out / "all", 70, 0, 0, seed=5, formats=["short"], max_tiles=1)
    for row in read_jsonl(out / "all" / "sft" / "train.jsonl"):
        images = [out / "all" / "images" / "sft" / p for p in image_list(row.get("image"))]
        assert all(Image.open(path).size == (64, 64) for path in images)
        core, _, options, _ = parse_prompt(row["conversations"][0]["value"])
        check_answer(row["skill"], core, images, row["answer"], options)
    assert cli_main(["synthetic", str(tmp_path / "bad"), "--formats", "essay"]) == 1
    assert "--formats: unknown format(s) essay; choose from short, mc" in capsys.readouterr().err
    assert cli_main(["synthetic", str(tmp_path / "bad"), "--max-tiles", "0"]) == 1
    assert "--max-tiles must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.5, 1.0])
def test_cot_fraction_sets_the_share_of_reasoned_sft_answers(tmp_path, fraction):
    # counted from the records' text, not their `cot` flag: a reasoned answer is asked for with the
    # step-by-step instruction and ends with "Final answer: <answer>"; a direct one is the bare answer
    n = 40
    out = tmp_path / "out"
    args = ["synthetic", str(out), "--n", str(n), "--skills", "colour,count", "--cot-fraction", str(fraction)]
    assert cli_main(args) == 0
    rows = read_jsonl(out / "sft" / "train.jsonl")
    reasoned = direct = 0
    for row in rows:
        human, gpt = (turn["value"] for turn in row["conversations"])
        if human.endswith(COT_INSTRUCTION) and gpt.endswith(f"Final answer: {row['answer']}"):
            reasoned += 1
        elif human.endswith((SHORT_INSTRUCTION, MC_INSTRUCTION)) and gpt == row["answer"]:
            direct += 1
    assert (reasoned, direct) == (round(fraction * n), n - round(fraction * n))
    assert sum(row["cot"] for row in rows) == reasoned
    # the held-out splits never carry the chain-of-thought instruction: the eval prompt chooses it
    assert not any(COT_INSTRUCTION in row["question"] for row in read_jsonl(out / "qa" / "qa.jsonl"))


def test_cot_fraction_out_of_range(tmp_path, capsys):
    assert cli_main(["synthetic", str(tmp_path / "bad"), "--cot-fraction", "1.5"]) == 1
    assert "--cot-fraction must be between 0 and 1, got 1.5" in capsys.readouterr().err
