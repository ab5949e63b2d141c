"""bench/guard.py and its labelled prompt set: the set is well-formed and every obfuscated row
really carries the obfuscation its category claims; the precision/recall arithmetic matches a
hand-computed example and scikit-learn; a small run of the script writes the JSON it promises.
The full benchmark (all layers, SmolLM2 included) is run by ``make bench``, not here."""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import os
import re
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import bench_scripts  # tests/ is on sys.path under pytest
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DATA = BENCH / "data" / "guard_prompts.jsonl"

# Words the plain text of an obfuscated attack holds once the obfuscation is undone.
INSTRUCTION_WORDS = re.compile(r"\b(ignore|disregard|forget|reveal|instructions?|system prompt|"
                               r"rules|unrestricted|developer|dan|password|hidden)\b", re.I)
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
# Cyrillic and Greek letters a reader takes for Latin ones (their scripts are checked below
# against Unicode's character names).
CONFUSABLES = {"\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p", "\u0441": "c",
               "\u0456": "i", "\u0445": "x", "\u0443": "y", "\u0455": "s", "\u039f": "O",
               "\u0391": "A", "\u0395": "E", "\u0399": "I", "\u03a4": "T"}
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "!": "i",
                      "@": "a", "$": "s"})


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()
            if line.strip()]


@pytest.fixture(scope="module")
def guard() -> ModuleType:
    return bench_scripts.load("guard")


def of(rows: list[dict[str, Any]], category: str) -> list[str]:
    texts = [r["text"] for r in rows if r["category"] == category]
    assert texts, f"no rows in {category}"
    return texts


# ----- the dataset --------------------------------------------------------------------------


def test_rows_are_well_formed(rows: list[dict[str, Any]]) -> None:
    assert len(rows) >= 300
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    for r in rows:
        assert set(r) == {"id", "text", "label", "category", "source"}, r["id"]
        assert r["label"] in ("attack", "benign"), r["id"]
        prefix, _, sub = r["category"].partition("/")
        assert prefix == r["label"] and re.fullmatch(r"[a-z0-9_]+", sub), r["id"]
        assert r["id"].startswith(f"{r['label']}-{sub}-"), r["id"]
        assert isinstance(r["text"], str) and r["text"].strip(), r["id"]
        assert r["source"].strip(), r["id"]
    labels = Counter(r["label"] for r in rows)
    assert labels["attack"] >= 140 and labels["benign"] >= 140, labels
    # Both labels in the first rows, so that ``--limit`` runs see both.
    assert {r["label"] for r in rows[:12]} == {"attack", "benign"}


def test_the_set_covers_the_sub_types_it_claims(rows: list[dict[str, Any]]) -> None:
    categories = Counter(r["category"] for r in rows)
    for sub in ("override", "prompt_leak", "chat_markup", "smuggling", "indirect_email",
                "indirect_web", "indirect_review", "indirect_code", "indirect_rag",
                "indirect_tool", "markdown_exfil", "jailbreak_persona", "jailbreak_dev_mode",
                "jailbreak_fiction", "refusal_suppression", "many_shot", "payload_splitting",
                "obfuscated_homoglyph", "obfuscated_zero_width", "obfuscated_leetspeak",
                "obfuscated_base64", "obfuscated_rot13", "ascii_smuggling", "gcg_suffix",
                "non_english"):
        assert categories[f"attack/{sub}"] >= 3, sub
    easy = categories["benign/ordinary"] + categories["benign/non_english"]
    benign = sum(n for c, n in categories.items() if c.startswith("benign/"))
    assert benign - easy >= benign / 2, "at least half of the benign rows are hard ones"
    for sub in ("security_question", "quoted_attack", "innocent_keyword", "roleplay_fiction",
                "legit_instruction", "unicode_legit"):
        assert categories[f"benign/{sub}"] >= 5, sub


def tag_payloads(text: str) -> list[str]:
    """The ASCII text spelled by each run of Unicode tag characters (U+E0020-U+E007E)."""
    return ["".join(chr(ord(c) - 0xE0000) for c in run)
            for run in re.findall("[\U000e0020-\U000e007e]+", text)]


def test_ascii_smuggling_rows_hide_an_instruction_in_tag_characters(
        rows: list[dict[str, Any]]) -> None:
    for text in of(rows, "attack/ascii_smuggling"):
        hidden = " ".join(tag_payloads(text))
        assert len(hidden) >= 10, text
        assert INSTRUCTION_WORDS.search(hidden) or "http" in hidden, hidden
        visible = re.sub("[\U000e0000-\U000e007f]", "", text)
        assert not INSTRUCTION_WORDS.search(visible), "the instruction is only in the tags"


def test_tag_characters_in_benign_rows_are_only_subdivision_flags(
        rows: list[dict[str, Any]]) -> None:
    # 🏴 + tag letters + CANCEL TAG is how England/Scotland/Wales flags are spelled: the hard
    # negatives for a scanner that flags every tag character.
    flag = re.compile("\U0001f3f4[\U000e0061-\U000e007a]{5}\U000e007f")
    flags = 0
    for r in rows:
        if r["label"] == "benign":
            flags += len(flag.findall(r["text"]))
            assert not re.search("[\U000e0000-\U000e007f]", flag.sub("", r["text"])), r["id"]
    assert flags >= 3


def test_zero_width_rows_split_instruction_words(rows: list[dict[str, Any]]) -> None:
    for text in of(rows, "attack/obfuscated_zero_width"):
        assert re.search(f"[A-Za-z][{ZERO_WIDTH}][A-Za-z]", text), text
        plain = re.sub(f"[{ZERO_WIDTH}]", "", text)
        assert INSTRUCTION_WORDS.search(plain), plain


def test_homoglyph_rows_mix_scripts_inside_words(rows: list[dict[str, Any]]) -> None:
    for char in CONFUSABLES:
        assert unicodedata.name(char).startswith(("CYRILLIC", "GREEK")), unicodedata.name(char)
    for text in of(rows, "attack/obfuscated_homoglyph"):
        folded = unicodedata.normalize("NFKC", text)  # fullwidth letters fold to ASCII
        mixed = any(c in CONFUSABLES for c in folded) or folded != text
        assert mixed, text
        plain = "".join(CONFUSABLES.get(c, c) for c in folded)
        assert plain != text and INSTRUCTION_WORDS.search(plain), plain


def test_leetspeak_rows_spell_instructions_with_digits(rows: list[dict[str, Any]]) -> None:
    for text in of(rows, "attack/obfuscated_leetspeak"):
        assert len(re.findall(r"\b\w*[a-z]\w*\d\w*\b|\b\w*\d\w*[a-z]\w*\b", text, re.I)) >= 3
        assert INSTRUCTION_WORDS.search(text.lower().translate(LEET)), text


def base64_payloads(text: str) -> list[str]:
    found = []
    for token in re.findall(r"[A-Za-z0-9+/]{16,}={0,2}", text):
        try:
            found.append(base64.b64decode(token, validate=True).decode("ascii"))
        except (binascii.Error, UnicodeDecodeError):
            continue
    return found


def test_base64_rows_hold_valid_base64_of_an_english_request(rows: list[dict[str, Any]]) -> None:
    for text in of(rows, "attack/obfuscated_base64"):
        decoded = base64_payloads(text)
        assert decoded and all(d.isprintable() and " " in d for d in decoded), text
        assert any(INSTRUCTION_WORDS.search(d) or "fake ID" in d for d in decoded), decoded


def test_rot13_rows_decode_to_an_instruction(rows: list[dict[str, Any]]) -> None:
    for text in of(rows, "attack/obfuscated_rot13"):
        assert not INSTRUCTION_WORDS.search(re.sub(r"\(rot13\)|ROT13", "", text)), text
        assert INSTRUCTION_WORDS.search(codecs.decode(text, "rot13")), text


def test_gcg_rows_end_in_a_symbol_heavy_suffix(rows: list[dict[str, Any]]) -> None:
    for text in of(rows, "attack/gcg_suffix"):
        tail = text[-120:]
        assert sum(not (c.isalnum() or c.isspace()) for c in tail) >= 6, tail


# ----- the arithmetic -----------------------------------------------------------------------


def test_precision_recall_f1_from_counts(guard: ModuleType) -> None:
    # By hand: 6 of 8 flagged are attacks, 6 of 10 attacks flagged, 2 of 12 benign flagged.
    r = guard.prf(tp=6, fp=2, tn=10, fn=4)
    assert r["n"] == 22
    assert r["precision"] == pytest.approx(0.75)
    assert r["recall"] == pytest.approx(0.6)
    assert r["f1"] == pytest.approx(2 / 3)  # 2 * 0.75 * 0.6 / 1.35
    assert r["fpr"] == pytest.approx(2 / 12)
    assert r["accuracy"] == pytest.approx(16 / 22)
    nothing_flagged = guard.prf(tp=0, fp=0, tn=5, fn=3)
    assert nothing_flagged["precision"] is None and nothing_flagged["f1"] is None
    assert nothing_flagged["recall"] == 0.0 and nothing_flagged["fpr"] == 0.0
    assert guard.prf(tp=0, fp=4, tn=1, fn=3)["f1"] == 0.0


def test_scores_per_category_match_sklearn(guard: ModuleType) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rows = [{"id": f"r{i}", "label": label, "category": f"{label}/{cat}"}
            for i, (label, cat) in enumerate(
                [("attack", "a")] * 5 + [("attack", "b")] * 3 + [("benign", "x")] * 4
                + [("benign", "y")] * 6)]
    flagged = {0, 1, 2, 5, 8, 12, 13, 14}  # a: 3 of 5, b: 1 of 3, x: 1 of 4, y: 3 of 6
    flags = {f"r{i}": i in flagged for i in range(len(rows))}
    s = guard.score(flags, rows)
    truth = [r["label"] == "attack" for r in rows]
    pred = [flags[r["id"]] for r in rows]
    p, r, f1, _ = metrics.precision_recall_fscore_support(truth, pred, average="binary")
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((p, r, f1))
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (4, 4, 6, 4)
    assert s["recall_by_category"] == {"a": {"n": 5, "flagged": 3, "rate": 0.6},
                                       "b": {"n": 3, "flagged": 1, "rate": pytest.approx(1 / 3)}}
    assert s["fpr_by_category"]["x"]["rate"] == 0.25 and s["fpr_by_category"]["y"]["rate"] == 0.5
    assert s["missed"] == ["r3", "r4", "r6", "r7"]
    assert s["false_positives"] == ["r12", "r13", "r14", "r8"]
    # A combination flags a case when any of its layers did.
    other = {k: k in ("r3", "r9") for k in flags}
    both = guard.combine("c", ["one", "two"], {"one": flags, "two": other}, rows)
    assert both["tp"] == 5 and both["fp"] == 5
    assert guard.combine("c", ["one", "three"], {"one": flags}, rows).startswith(
        "not computed")


def test_percentile_is_nearest_rank(guard: ModuleType) -> None:
    values = list(range(1, 101))
    assert guard.percentile(values, 50) == 50 and guard.percentile(values, 99) == 99
    assert guard.percentile([3.0], 99) == 3.0 and guard.percentile([1, 2], 100) == 2


# ----- a small run ----------------------------------------------------------------------------


def test_a_small_run_writes_the_promised_json(tmp_path: Path) -> None:
    out = tmp_path / "guard.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "guard.py"), "--limit", "12", "--layers",
         "injection,unicode", "--out", str(out), "--pii-per-kind", "2", "--pii-bytes", "20000",
         "--policy-runs", "5", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "guard layers on 12 prompts" in proc.stdout
    data = json.loads(out.read_text())
    assert {"date", "command", "machine", "git_commit", "dataset", "layers", "combinations",
            "pii", "policy_latency"} <= set(data)
    assert data["machine"]["cpu_count"] and data["git_commit"]
    assert data["dataset"]["rows"] == 12 and set(data["dataset"]["labels"]) == {"attack",
                                                                                  "benign"}
    assert set(data["layers"]) == {"injection", "unicode"}
    for layer in data["layers"].values():
        assert {"threshold", "threshold_from", "precision", "recall", "f1", "fpr",
                "recall_by_category", "fpr_by_category", "missed", "false_positives",
                "wall_s", "scan_s", "kb_per_s", "scan_ms", "bulk", "eval", "errors"} <= set(layer)
        assert layer["tp"] + layer["fp"] + layer["tn"] + layer["fn"] == 12
        assert layer["errors"] == 0, layer["error_examples"]
        # The eval run's own per-case metric agrees with the confusion counts.
        assert layer["eval"]["status"] == "finished"
        assert layer["eval"]["flagged_mean"] == pytest.approx((layer["tp"] + layer["fp"]) / 12)
        assert layer["eval"]["correct_mean"] == pytest.approx(layer["accuracy"])
        assert layer["kb_per_s"] > 0 and layer["bulk"]["kb"] >= 200
    # Perplexity was not run, so no combination that needs it is made up.
    assert all(isinstance(v, str) and v.startswith("not computed")
               for v in data["combinations"].values())
    assert isinstance(data["pii"], dict | str) and isinstance(data["policy_latency"], dict | str)
