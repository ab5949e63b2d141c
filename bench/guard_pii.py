"""PII benchmark: detection and redaction recall on generated valid identifiers in realistic
text, false positives on checksum-invalid look-alikes, and scanner throughput.

    .venv/bin/python bench/guard_pii.py [--per-kind 50] [--seed 0] [--bytes 1000000]

For every kind the PII scanner reports, ``make_cases`` draws ``per_kind`` valid identifiers at
random (check digits computed with python-stdnum's ``calc_check_digit(s)`` where it has one,
otherwise with the published algorithm, and every value confirmed by stdnum's ``is_valid``),
writes each in one of its usual formats (with and without separators), and embeds it in a
sentence from varied templates (e-mails, support tickets, forms, chat messages, CSV rows, log
lines; for the short all-digit IDs every template names the kind, as forms and tickets do;
``--unlabelled`` drops every label, the harder variant). For checksummed kinds (and the
structural US SSN and IPv4 rules) it adds as many look-alikes with one digit changed (or a
rule broken), each confirmed invalid by the same reference.

``evaluate`` reports per kind: recall (a finding of the right kind overlapping the value),
exact-span rate, false positives on the look-alikes (a finding of *that* kind on the value),
look-alikes flagged as any other kind (an honest side figure: a one-digit-changed NHS number
can still be a fine phone number), and redaction recall through ``Policy([Rule(pii,
"redact")])``. ``throughput`` measures scan() speed in KB/s on ~1 MB of case sentences mixed
with Python standard-library docstrings. ``bench/guard.py`` imports this module: keep the API.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import ipaddress
import random
import re
import string
import time
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from fmstack.guard import Policy, Rule, make_scanner
from fmstack.guard.core import Scanner

NAMES = ["Ada Lovelace", "Jan de Vries", "Marie Dubois", "Lucía García", "Marco Rossi",
         "Aino Virtanen", "Erik Johansson", "Priya Sharma", "Oliver Smith", "Wei Zhang",
         "João Silva", "Emily Johnson", "Kwame Mensah", "Sofia Novak"]
CITIES = ["Amsterdam", "Lyon", "Madrid", "Milan", "Helsinki", "Uppsala", "Pune", "Leeds",
          "Chengdu", "Recife", "Boston", "Accra"]
DOMAINS = ["example.org", "mail.example.com", "corp.example.net", "uni-example.edu",
           "example.co.uk", "post.example.de"]

# How people name each kind in running text (forms, tickets, column headers).
LABELS: dict[str, list[str]] = {
    "email": ["email", "e-mail address", "mail"],
    "phone": ["phone", "mobile number", "tel"],
    "credit_card": ["card number", "credit card", "Visa/MC"],
    "iban": ["IBAN", "bank account (IBAN)", "account"],
    "ip_address": ["IP address", "client IP", "source ip"],
    "national_id.nl_bsn": ["BSN", "burgerservicenummer"],
    "national_id.fr_nir": ["NIR", "numéro de sécurité sociale"],
    "national_id.es_dni": ["DNI", "NIF"],
    "national_id.es_nie": ["NIE"],
    "national_id.it_codice_fiscale": ["codice fiscale", "CF"],
    "national_id.fi_hetu": ["HETU", "henkilötunnus"],
    "national_id.se_personnummer": ["personnummer"],
    "national_id.in_aadhaar": ["Aadhaar", "Aadhaar no."],
    "national_id.gb_nhs": ["NHS number", "NHS no"],
    "national_id.cn_ric": ["身份证号", "resident ID card"],
    "national_id.br_cpf": ["CPF"],
    "national_id.us_ssn": ["SSN", "social security number"],
}
KINDS = list(LABELS)

TEMPLATES_LABELLED = [
    "Hi team, please update my {label} to {value} before Friday. Thanks, {name}",
    "Ticket #{n}: customer {name} ({city}) says the {label} {value} was rejected at checkout.",
    "Full name: {name}\n{Label}: {value}\nCity: {city}\n",
    "[{hh}:{mm}] {name}: sure, my {label} is {value}, let me know if you need more",
    "Dear {name},\n\nwe have verified your {label} ({value}). No further action is needed.\n\n"
    "Kind regards,\nCustomer Support",
    "id,name,city,{col}\n{n},{name},{city},{value}\n",
    "2024-05-{dd}T{hh}:{mm}:07Z INFO user={n} {col}={value} status=ok latency_ms={ms}",
    "Can you double-check {value}? That's the {label} {name} gave us on the phone.",
]
TEMPLATES_PLAIN = [
    "{name} wrote: \"{value}\" -- is this the one on file?",
    "Forwarding from {city}: {value}. Please handle today.",
]


def _luhn(prefix: str) -> str:
    return prefix + _std("luhn").calc_check_digit(prefix)


def _std(name: str) -> Any:
    return importlib.import_module("stdnum." + name)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _date(rng: random.Random, lo: int = 1940, hi: int = 2015) -> tuple[int, int, int]:
    return rng.randint(lo, hi), rng.randint(1, 12), rng.randint(1, 28)


# --- generators: rng -> (written value, compact value); values are confirmed by `_REFERENCE`.

def gen_email(rng: random.Random) -> str:
    ascii_name = unicodedata.normalize("NFKD", rng.choice(NAMES)).encode("ascii", "ignore")
    first, last = ascii_name.decode().lower().split(" ", 1)
    last = last.replace(" ", "")
    user = rng.choice([f"{first}.{last}", f"{first[0]}{last}{rng.randint(1, 99)}",
                       f"{first}_{last}+news"])
    return f"{user}@{rng.choice(DOMAINS)}"


def gen_phone(rng: random.Random) -> str:
    d = lambda n: _digits(rng, n)  # noqa: E731
    area = str(rng.randint(2, 9)) + d(2)
    return rng.choice([
        f"+44 20 {d(4)} {d(4)}", f"+1 {area} {d(3)} {d(4)}", f"+1-{area}-{d(3)}-{d(4)}",
        f"({area}) {d(3)}-{d(4)}", f"{area}-{d(3)}-{d(4)}", f"{area}.{d(3)}.{d(4)}",
        f"020 {d(4)} {d(4)}", f"07{d(3)} {d(6)}", f"030 {d(8)}", f"0{rng.randint(6, 7)} "
        f"{d(2)} {d(2)} {d(2)} {d(2)}", f"06-{d(8)}", f"+49 30 {d(7)}", f"+33 6 {d(2)} {d(2)} "
        f"{d(2)} {d(2)}", f"+31 6 {d(8)}", f"+91 {rng.randint(7, 9)}{d(4)} {d(5)}",
        f"+4420{d(8)}",
    ])


_CARD_PREFIXES = [("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("34", 15),
                  ("37", 15), ("6011", 16), ("65", 16), ("3530", 16), ("36", 14), ("62", 16)]


def gen_credit_card(rng: random.Random) -> str:
    prefix, length = rng.choice(_CARD_PREFIXES)
    number = _luhn(prefix + _digits(rng, length - len(prefix) - 1))
    sep = rng.choice(["", " ", "-"])
    if not sep:
        return number
    if length == 15:
        return sep.join([number[:4], number[4:10], number[10:]])
    if length == 14:
        return sep.join([number[:4], number[4:10], number[10:]])
    return sep.join(number[i:i + 4] for i in range(0, length, 4))


_IBAN_COUNTRIES = ["DE", "NL", "GB", "FR", "ES", "IT", "BE", "CH", "AT", "PL", "SE", "DK",
                   "FI", "IE", "PT", "NO"]


def _bban(rng: random.Random, spec: str) -> str:
    out = []
    for count, typ in ((int(m[0]), m[1]) for m in _BBAN_RE.findall(spec)):
        alphabet = {"n": string.digits, "a": string.ascii_uppercase,
                    "c": string.ascii_uppercase + string.digits}[typ]
        out.append("".join(rng.choice(alphabet) for _ in range(count)))
    return "".join(out)


def gen_iban(rng: random.Random) -> str:
    iban = _std("iban")
    numdb = _std("numdb")
    while True:
        cc = rng.choice(_IBAN_COUNTRIES)
        spec = numdb.get("iban").info(cc)[0][1]["bban"]
        bban = _bban(rng, spec)
        number = cc + iban.calc_check_digits(cc + "00" + bban) + bban
        if iban.is_valid(number):  # some countries add a national check inside the BBAN
            break
    if rng.random() < 0.5:
        return number
    return " ".join(number[i:i + 4] for i in range(0, len(number), 4))


def gen_ip_address(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return str(ipaddress.IPv6Address(rng.getrandbits(128) | (0x2001 << 112)))
    return ".".join(str(rng.randint(1, 223) if i == 0 else rng.randint(0, 255)) for i in range(4))


def gen_nl_bsn(rng: random.Random) -> str:
    while True:
        body = _digits(rng, 8)
        check = sum((9 - i) * int(c) for i, c in enumerate(body)) % 11
        if check < 10 and int(body) > 0:
            number = body + str(check)
            break
    return rng.choice([number, f"{number[:4]}.{number[4:6]}.{number[6:]}"])


def gen_fr_nir(rng: random.Random) -> str:
    y, m, _ = _date(rng)
    dept = rng.choice([f"{rng.randint(1, 95):02d}", "2A", "2B"])
    body = f"{rng.choice('12')}{y % 100:02d}{m:02d}{dept}{_digits(rng, 3)}{_digits(rng, 3)}"
    number = body + _std("fr.nir").calc_check_digits(body)
    if rng.random() < 0.5:
        return number
    parts = [number[0], number[1:3], number[3:5], number[5:7], number[7:10], number[10:13],
             number[13:]]
    return " ".join(parts)


def gen_es_dni(rng: random.Random) -> str:
    body = _digits(rng, 8)
    return body + rng.choice(["", "-"]) + _std("es.dni").calc_check_digit(body)


def gen_es_nie(rng: random.Random) -> str:
    body = rng.choice("XYZ") + _digits(rng, 7)
    return body + _std("es.nie").calc_check_digit(body)


def gen_it_codice_fiscale(rng: random.Random) -> str:
    y, m, d = _date(rng)
    letters = lambda n: "".join(rng.choice(string.ascii_uppercase) for _ in range(n))  # noqa
    day = d + (40 if rng.random() < 0.5 else 0)
    body = (f"{letters(6)}{y % 100:02d}{'ABCDEHLMPRST'[m - 1]}{day:02d}"
            f"{rng.choice('ABCDEFGHILM')}{rng.randint(1, 999):03d}")
    return body + _std("it.codicefiscale").calc_check_digit(body)


def gen_fi_hetu(rng: random.Random) -> str:
    y, m, d = _date(rng, 1930, 2020)
    sign = "-" if y < 2000 else rng.choice("A")
    individual = f"{rng.randint(2, 899):03d}"
    # published algorithm: the 9 digits DDMMYYNNN mod 31 pick the control character
    base = f"{d:02d}{m:02d}{y % 100:02d}"
    control = "0123456789ABCDEFHJKLMNPRSTUVWXY"[int(base + individual) % 31]
    return f"{base}{sign}{individual}{control}"


def gen_se_personnummer(rng: random.Random) -> str:
    y, m, d = _date(rng)
    body = f"{y % 100:02d}{m:02d}{d:02d}{_digits(rng, 3)}"
    number = body + _std("luhn").calc_check_digit(body)
    return rng.choice([f"{number[:6]}-{number[6:]}", f"{y // 100}{number[:6]}-{number[6:]}"])


def gen_in_aadhaar(rng: random.Random) -> str:
    while True:
        body = str(rng.randint(2, 9)) + _digits(rng, 10)
        number = body + _std("verhoeff").calc_check_digit(body)
        if number != number[::-1]:
            break
    return rng.choice([number, f"{number[:4]} {number[4:8]} {number[8:]}"])


def gen_gb_nhs(rng: random.Random) -> str:
    while True:
        body = _digits(rng, 9)
        check = 11 - sum(int(c) * (10 - i) for i, c in enumerate(body)) % 11
        if check != 10:
            number = body + str(check % 11)
            break
    return rng.choice([number, f"{number[:3]} {number[3:6]} {number[6:]}"])


_RIC_REGIONS = ["110101", "110105", "310101", "310115", "440106", "440305", "510107",
                "330106", "320102", "420106", "610113", "500103"]


def gen_cn_ric(rng: random.Random) -> str:
    ric = _std("cn.ric")
    while True:
        y, m, d = _date(rng, 1950, 2005)
        body = f"{rng.choice(_RIC_REGIONS)}{y}{m:02d}{d:02d}{_digits(rng, 3)}"
        number = body + ric.calc_check_digit(body + "0")
        if ric.is_valid(number):  # the region must have existed in the birth year
            return number


def gen_br_cpf(rng: random.Random) -> str:
    body = _digits(rng, 9)
    # published algorithm: two mod-11 check digits with weights 10..2 and 11..2
    d1 = sum((10 - i) * int(c) for i, c in enumerate(body)) * 10 % 11 % 10
    d2 = sum((11 - i) * int(c) for i, c in enumerate(body + str(d1))) * 10 % 11 % 10
    number = f"{body}{d1}{d2}"
    return rng.choice([number, f"{number[:3]}.{number[3:6]}.{number[6:9]}-{number[9:]}"])


def gen_us_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "email": gen_email, "phone": gen_phone, "credit_card": gen_credit_card, "iban": gen_iban,
    "ip_address": gen_ip_address,
    "national_id.nl_bsn": gen_nl_bsn, "national_id.fr_nir": gen_fr_nir,
    "national_id.es_dni": gen_es_dni, "national_id.es_nie": gen_es_nie,
    "national_id.it_codice_fiscale": gen_it_codice_fiscale,
    "national_id.fi_hetu": gen_fi_hetu, "national_id.se_personnummer": gen_se_personnummer,
    "national_id.in_aadhaar": gen_in_aadhaar, "national_id.gb_nhs": gen_gb_nhs,
    "national_id.cn_ric": gen_cn_ric, "national_id.br_cpf": gen_br_cpf,
    "national_id.us_ssn": gen_us_ssn,
}

# The reference each generated value is checked against (python-stdnum where it has one).
_REFERENCE: dict[str, str] = {
    "credit_card": "luhn", "iban": "iban", "national_id.nl_bsn": "nl.bsn",
    "national_id.fr_nir": "fr.nir", "national_id.es_dni": "es.dni", "national_id.es_nie": "es.nie",
    "national_id.it_codice_fiscale": "it.codicefiscale", "national_id.fi_hetu": "fi.hetu",
    "national_id.se_personnummer": "se.personnummer", "national_id.in_aadhaar": "in_.aadhaar",
    "national_id.gb_nhs": "gb.nhs", "national_id.cn_ric": "cn.ric", "national_id.br_cpf": "br.cpf",
    "national_id.us_ssn": "us.ssn",
}


def reference_valid(kind: str, value: str) -> bool:
    """Whether ``value`` is valid for ``kind`` by the reference (stdnum, ``ipaddress``)."""
    if kind == "ip_address":
        try:
            ipaddress.ip_address(value)
            return True
        except ValueError:
            return False
    if kind not in _REFERENCE:
        return True
    module = _std(_REFERENCE[kind])
    compact = value.replace(" ", "").replace("-", "") if kind == "credit_card" else value
    if kind == "national_id.es_dni" or kind == "national_id.es_nie":
        compact = value.replace("-", "")
    return bool(module.is_valid(compact))


def invalid_lookalike(kind: str, value: str, rng: random.Random) -> str | None:
    """``value`` with one digit changed (or, for the rule-only kinds, a rule broken), such that
    the reference rejects it; None when no such change was found."""
    if kind == "national_id.us_ssn":
        area, group, serial = value.split("-")
        return rng.choice([f"666-{group}-{serial}", f"000-{group}-{serial}",
                           f"9{area[1:]}-{group}-{serial}", f"{area}-00-{serial}"])
    if kind == "ip_address":
        if ":" in value:
            return None
        parts = value.split(".")
        parts[rng.randrange(4)] = str(rng.randint(256, 999))
        return ".".join(parts)
    positions = [i for i, c in enumerate(value) if c.isdigit()]
    for _ in range(20):
        i = rng.choice(positions)
        new = value[:i] + rng.choice([d for d in string.digits if d != value[i]]) + value[i + 1:]
        if not reference_valid(kind, new):
            return new
    return None


def _sentence(rng: random.Random, kind: str, value: str,
              labels: bool = True) -> tuple[str, int]:
    label = rng.choice(LABELS[kind])
    if not labels:
        templates = TEMPLATES_PLAIN
    else:
        templates = TEMPLATES_LABELLED + (TEMPLATES_PLAIN if kind in _STRONG_KINDS else [])
    template = rng.choice(templates)
    fields = {"label": label, "Label": label[0].upper() + label[1:],
              "col": label.lower().replace(" ", "_").replace("(", "").replace(")", ""),
              "name": rng.choice(NAMES), "city": rng.choice(CITIES),
              "n": str(rng.randint(1000, 99999)), "hh": f"{rng.randint(0, 23):02d}",
              "mm": f"{rng.randint(0, 59):02d}", "dd": f"{rng.randint(1, 28):02d}",
              "ms": str(rng.randint(3, 900))}
    before, after = template.split("{value}")
    head = before.format(**fields)
    return head + value + after.format(**fields), len(head)


# Kinds recognisable without a label (the others are short digit runs that need one to be
# told apart: a bare 10-digit number is as much an NHS number as a personnummer or a phone).
_STRONG_KINDS = {"email", "phone", "credit_card", "iban", "ip_address", "national_id.fr_nir",
                 "national_id.it_codice_fiscale", "national_id.cn_ric", "national_id.fi_hetu",
                 "national_id.es_nie", "national_id.es_dni", "national_id.us_ssn"}
_BBAN_RE = re.compile(r"(\d+)!([nac])")


def make_cases(per_kind: int = 50, seed: int = 0, labels: bool = True) -> list[dict[str, Any]]:
    """``per_kind`` valid identifiers of every kind in sentences, plus as many invalid
    look-alikes of every checksummed (or rule-checked) kind; see the module docstring.
    ``labels=False`` puts every value in a sentence that does not name its kind (the harder
    variant: a bare short number can be several kinds)."""
    rng = random.Random(seed)
    cases: list[dict[str, Any]] = []
    for kind in KINDS:
        gen = GENERATORS[kind]
        for _ in range(per_kind):
            value = gen(rng)
            if not reference_valid(kind, value):
                raise AssertionError(f"generated {kind} {value!r} is invalid by the reference")
            text, start = _sentence(rng, kind, value, labels)
            cases.append({"text": text, "kind": kind, "value": value, "start": start,
                          "end": start + len(value), "valid": True})
        if kind in ("email", "phone"):
            continue
        made = 0
        while made < per_kind:
            bad = invalid_lookalike(kind, gen(rng), rng)
            if bad is None:
                continue
            text, start = _sentence(rng, kind, bad, labels)
            cases.append({"text": text, "kind": kind, "value": bad, "start": start,
                          "end": start + len(bad), "valid": False})
            made += 1
    return cases


def evaluate(cases: list[dict[str, Any]], scanner: Scanner | None = None) -> dict[str, Any]:
    """Recall, exact spans, false positives and redaction recall per kind (module docstring)."""
    pii = scanner if scanner is not None else make_scanner("pii")
    policy = Policy([Rule(pii, "redact")])
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    misses: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for case in cases:
        kind, s, e = case["kind"], case["start"], case["end"]
        found = pii.scan(case["text"])
        on_value = [f for f in found if f.start < e and s < f.end]
        same = [f for f in on_value if f.kind == kind]
        row = per[kind]
        if case["valid"]:
            row["valid"] += 1
            row["found"] += bool(same)
            row["exact"] += any(f.start == s and f.end == e for f in same)
            redacted = policy.check(case["text"]).text
            row["redacted"] += case["value"] not in redacted
            if not same:
                misses.append({"kind": kind, "value": case["value"],
                               "found_as": [f.kind for f in on_value]})
        else:
            row["invalid"] += 1
            row["false_positive"] += bool(same)
            row["flagged_other_kind"] += bool(on_value) and not same
            if on_value and not same:
                others.append({"kind": kind, "value": case["value"],
                               "found_as": [f.kind for f in on_value]})
    kinds: dict[str, Any] = {}
    for kind, row in per.items():
        out: dict[str, Any] = {"valid": row["valid"]}
        if row["valid"]:
            out["recall"] = round(row["found"] / row["valid"], 4)
            out["exact_span"] = round(row["exact"] / row["valid"], 4)
            out["redaction_recall"] = round(row["redacted"] / row["valid"], 4)
        if row["invalid"]:
            out["invalid"] = row["invalid"]
            out["false_positives"] = row["false_positive"]
            out["lookalikes_flagged_as_other_kind"] = row["flagged_other_kind"]
        kinds[kind] = out
    valid = sum(r["valid"] for r in per.values())
    return {
        "kinds": kinds,
        "recall": round(sum(r["found"] for r in per.values()) / max(1, valid), 4),
        "redaction_recall": round(sum(r["redacted"] for r in per.values()) / max(1, valid), 4),
        "false_positives": sum(r["false_positive"] for r in per.values()),
        "invalid": sum(r["invalid"] for r in per.values()),
        "misses": misses[:20],
        "lookalikes_flagged_as_other_kind": others[:20],
    }


def _prose() -> list[str]:
    """Docstrings of the standard library: ordinary technical prose that holds no PII."""
    import collections
    import email
    import json
    import os
    import pathlib
    import subprocess
    import textwrap

    docs: list[str] = []
    for mod in (os, json, re, collections, pathlib, subprocess, textwrap, email, inspect):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                docs.append(doc)
    return docs


def realistic_text(text_bytes: int = 1_000_000, seed: int = 0) -> str:
    """About ``text_bytes`` of stdlib docstrings with one case sentence after every few."""
    rng = random.Random(seed)
    sentences = [c["text"] for c in make_cases(per_kind=5, seed=seed)]
    docs = _prose()
    parts: list[str] = []
    size = 0
    while size < text_bytes:
        part = rng.choice(docs) if rng.random() < 0.8 else rng.choice(sentences)
        parts.append(part)
        size += len(part.encode()) + 2
    return "\n\n".join(parts)


def throughput(scanner: Scanner, text_bytes: int = 1_000_000, rounds: int = 3) -> dict[str, Any]:
    """scan() speed on ``realistic_text``: the best of ``rounds`` runs, in KB/s."""
    text = realistic_text(text_bytes)
    size = len(text.encode())
    best = float("inf")
    found = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        found = len(scanner.scan(text))
        best = min(best, time.perf_counter() - t0)
    return {"scanner": scanner.name, "bytes": size, "seconds": round(best, 4),
            "kb_per_s": round(size / 1000 / best, 1), "findings": found}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-kind", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bytes", type=int, default=1_000_000)
    ap.add_argument("--unlabelled", action="store_true",
                    help="no sentence names its kind (the harder variant)")
    args = ap.parse_args()
    cases = make_cases(args.per_kind, args.seed, labels=not args.unlabelled)
    result = evaluate(cases)
    print(f"{'kind':32s} {'recall':>7s} {'exact':>7s} {'redact':>7s} {'FP':>7s} {'other':>6s}")
    for kind, row in result["kinds"].items():
        fp = f"{row['false_positives']}/{row['invalid']}" if "invalid" in row else "-"
        other = str(row.get("lookalikes_flagged_as_other_kind", "-"))
        print(f"{kind:32s} {row['recall']:7.3f} {row['exact_span']:7.3f} "
              f"{row['redaction_recall']:7.3f} {fp:>7s} {other:>6s}")
    print(f"overall recall {result['recall']:.4f}, redaction recall "
          f"{result['redaction_recall']:.4f}, false positives {result['false_positives']}/"
          f"{result['invalid']}")
    for miss in result["misses"]:
        print("  missed:", miss)
    for other in result["lookalikes_flagged_as_other_kind"]:
        print("  look-alike flagged as another kind:", other)
    for name in ("pii", "secrets"):
        t = throughput(make_scanner(name), args.bytes)
        print(f"throughput {name}: {t['kb_per_s']:.0f} KB/s ({t['bytes']:,} bytes in "
              f"{t['seconds']:.3f} s, {t['findings']} findings)")


if __name__ == "__main__":
    main()
