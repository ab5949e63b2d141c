"""PII and secrets scanners and the reversible vault, checked against python-stdnum (the
reference for every checksum) and published example numbers; the benchmark's generators are
checked here too, on a small sample."""

from __future__ import annotations

import base64
import json
import secrets
import string
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import bench_scripts  # tests/ is on sys.path under pytest
import pytest
from stdnum import iban, luhn
from stdnum.br import cpf
from stdnum.cn import ric
from stdnum.es import dni, nie
from stdnum.fi import hetu
from stdnum.fr import nir
from stdnum.gb import nhs
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.se import personnummer
from stdnum.us import ssn

from fmstack.errors import ConfigError
from fmstack.guard import Finding, Policy, Rule, Scanner, make_scanner
from fmstack.guard.credentials import SecretsScanner, shannon_entropy
from fmstack.guard.pii import KINDS, PIIScanner
from fmstack.guard.vault import Vault


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return bench_scripts.load("guard_pii")


@pytest.fixture(scope="module")
def pii() -> PIIScanner:
    scanner = make_scanner("pii")
    assert isinstance(scanner, PIIScanner)
    return scanner


@pytest.fixture(scope="module")
def secrets_scanner() -> SecretsScanner:
    scanner = make_scanner("secrets")
    assert isinstance(scanner, SecretsScanner)
    return scanner


def only(findings: list[Finding], text: str, value: str) -> Finding:
    """The one finding that covers ``value`` in ``text``, which must span it exactly."""
    start = text.index(value)
    on = [f for f in findings if f.start < start + len(value) and start < f.end]
    assert len(on) == 1, (value, on)
    assert (on[0].start, on[0].end) == (start, start + len(value)), (value, on[0])
    assert value not in on[0].detail and value.replace(" ", "") not in on[0].detail
    return on[0]


# Published examples (the validators' own documentation and the issuers' test numbers), each
# in a sentence; the reference check says they are valid.
PUBLISHED: list[tuple[str, str, str, Any]] = [
    ("email", "Write to ada.lovelace+work@example.co.uk today.", "ada.lovelace+work@example.co.uk",
     None),
    ("credit_card", "Paid with 4111 1111 1111 1111 on Monday.", "4111 1111 1111 1111", luhn),
    ("credit_card", "Amex 3782-822463-10005 was declined", "3782-822463-10005", luhn),
    ("credit_card", "charge 5555555555554444 please", "5555555555554444", luhn),
    ("iban", "Refund to GR16 0110 1250 0000 0001 2300 695, ref 12.",
     "GR16 0110 1250 0000 0001 2300 695", iban),
    ("iban", "IBAN:DE89370400440532013000", "DE89370400440532013000", iban),
    ("national_id.nl_bsn", "Mijn BSN is 111222333.", "111222333", bsn),
    ("national_id.fr_nir", "NIR : 2 95 10 99 126 111 93 (carte vitale)",
     "2 95 10 99 126 111 93", nir),
    ("national_id.fr_nir", "numéro 253072B07300470 ok", "253072B07300470", nir),
    ("national_id.es_dni", "DNI 54362315K, Madrid", "54362315K", dni),
    ("national_id.es_nie", "Su NIE es X2482300W.", "X2482300W", nie),
    ("national_id.it_codice_fiscale", "Codice fiscale: RCCMNL83S18D969H", "RCCMNL83S18D969H",
     codicefiscale),
    ("national_id.fi_hetu", "HETU 131052-308T vahvistettu", "131052-308T", hetu),
    ("national_id.se_personnummer", "personnummer 880320-0016, Uppsala", "880320-0016",
     personnummer),
    ("national_id.in_aadhaar", "Aadhaar: 2341 2341 2346", "2341 2341 2346", aadhaar),
    ("national_id.gb_nhs", "NHS number 943 476 5919 registered", "943 476 5919", nhs),
    ("national_id.cn_ric", "身份证号 360426199101010071。", "360426199101010071", ric),
    ("national_id.br_cpf", "CPF 390.533.447-05 cadastrado", "390.533.447-05", cpf),
    ("national_id.us_ssn", "My SSN is 536-90-4399.", "536-90-4399", ssn),
    ("ip_address", "Login from 203.0.113.42 failed", "203.0.113.42", None),
    ("ip_address", "peer [2001:db8:85a3::8a2e:370:7334] port 443", "2001:db8:85a3::8a2e:370:7334",
     None),
    ("phone", "Call me on +44 20 7946 0958 tomorrow", "+44 20 7946 0958", None),
    ("phone", "Office: (555) 123-4567, ext 12", "(555) 123-4567", None),
    ("phone", "Bel 06-12345678 als het dringend is", "06-12345678", None),
    ("phone", "tél. 06 12 34 56 78", "06 12 34 56 78", None),
    ("phone", "Tel +49 (0)30 1234567", "+49 (0)30 1234567", None),
]


@pytest.mark.parametrize(("kind", "text", "value", "reference"), PUBLISHED,
                         ids=[f"{p[0]}-{i}" for i, p in enumerate(PUBLISHED)])
def test_published_examples_are_found_with_kind_and_exact_span(
        pii: PIIScanner, kind: str, text: str, value: str, reference: Any) -> None:
    if reference is not None:
        compact = value.replace(" ", "").replace("-", "") if reference in (luhn, iban) else value
        assert reference.is_valid(compact)
    finding = only(pii.scan(text), text, value)
    assert finding.kind == kind
    assert finding.scanner == "pii"
    assert 0.0 < finding.score <= 1.0


CHECKSUMMED = [p for p in PUBLISHED if p[3] is not None and p[0] != "national_id.us_ssn"]


@pytest.mark.parametrize(("kind", "text", "value", "reference"), CHECKSUMMED,
                         ids=[f"{p[0]}-{i}" for i, p in enumerate(CHECKSUMMED)])
def test_one_digit_changed_is_not_that_kind(pii: PIIScanner, kind: str, text: str, value: str,
                                            reference: Any) -> None:
    changed = 0
    for i, c in enumerate(value):
        if not c.isdigit():
            continue
        bad = value[:i] + str((int(c) + 3) % 10) + value[i + 1:]
        compact = bad.replace(" ", "").replace("-", "") if reference in (luhn, iban) else bad
        assert not reference.is_valid(compact), bad  # the reference rejects it...
        bad_text = text.replace(value, bad)
        s = bad_text.index(bad)
        hits = [f for f in pii.scan(bad_text)
                if f.kind == kind and f.start < s + len(bad) and s < f.end]
        assert hits == [], (bad, hits)  # ...and so does the scanner
        changed += 1
    assert changed >= 7  # every digit of the value (an NIE has seven)


def test_generated_cases_meet_the_targets_and_match_the_reference(bench: ModuleType,
                                                                  pii: PIIScanner) -> None:
    cases = bench.make_cases(per_kind=12, seed=7)
    assert {c["kind"] for c in cases} == set(KINDS)
    for c in cases:
        assert c["text"][c["start"]:c["end"]] == c["value"]
        assert bench.reference_valid(c["kind"], c["value"]) == c["valid"], c
    result = bench.evaluate(cases, pii)
    for kind, row in result["kinds"].items():
        assert row["recall"] == 1.0, (kind, result["misses"])
        assert row["exact_span"] == 1.0, kind
        assert row["redaction_recall"] == 1.0, kind
        assert row.get("false_positives", 0) == 0, kind
    assert result["invalid"] == 12 * (len(KINDS) - 2)  # every kind but email and phone
    # the harder variant, where no sentence names the kind, still finds and redacts them all
    bare = bench.evaluate(bench.make_cases(per_kind=8, seed=3, labels=False), pii)
    assert bare["recall"] == 1.0 and bare["redaction_recall"] == 1.0, bare["misses"]
    assert bare["false_positives"] == 0


def test_throughput_reports_a_rate_on_realistic_text(bench: ModuleType) -> None:
    text = bench.realistic_text(20_000, seed=1)
    assert len(text) >= 19_000
    out = bench.throughput(make_scanner("pii"), text_bytes=20_000, rounds=1)
    assert out["scanner"] == "pii" and out["kb_per_s"] > 0 and out["findings"] > 0


NOT_PII = [
    "Released 2024-01-15 10:30:45 UTC; see https://example.org/a/b?id=12345",
    "pip install fmstack==0.3.12 and then run version 1.2.3.4 of the tool",
    "Upgrade to v10.0.0.1 or build 4.4.0.19041 (firmware 1.0.2.3)",
    "The loop ran 1234567890 times; the hash is 9f86d081884c7d659a2feaa0c55ad015",
    "Use std::vector and Foo::Bar in C++; icon@2x.png is the retina image",
    "Ratio 3.14159265358979 and 2,718,281,828 are constants",
    "Order 1234567 shipped at 12:30; the total is 1,299.00 EUR",
    "IEEE 754-2008 and ISO 8601:2004 are standards; RFC 5322 defines addresses",
    "pages 10-20 and 2019-2023, tables 3.2.1 and 4.5.6.7.8",
    "int x = 0x7fffffff; long y = 9223372036854775807L;",
    "CPF 064.446.909-54 (a typo: the check digits fail)",  # nor a phone once "-54" is cut off
]


@pytest.mark.parametrize("text", NOT_PII)
def test_ordinary_text_and_code_are_not_flagged(pii: PIIScanner, text: str) -> None:
    assert [(f.kind, text[f.start:f.end]) for f in pii.scan(text)] == []


def test_overlapping_readings_resolve_to_the_most_specific_kind(pii: PIIScanner) -> None:
    text = ("card 4111-1111-1111-1111, IBAN NL91 ABNA 0417 1643 00, "
            "RIC 11010519491231002X, call +31 6 12345678")
    kinds = [(f.kind, text[f.start:f.end]) for f in pii.scan(text)]
    assert kinds == [("credit_card", "4111-1111-1111-1111"),
                     ("iban", "NL91 ABNA 0417 1643 00"),
                     ("national_id.cn_ric", "11010519491231002X"),
                     ("phone", "+31 6 12345678")]
    # a trailing word-like group is dropped, a trailing "-" group is not
    text = "call 555-123-4567 2 times"
    assert only(pii.scan(text), text, "555-123-4567").kind == "phone"
    # a card glued to more digits is one longer number, not a card plus leftovers
    assert pii.scan("ref 4111 1111 1111 1111 2025 9") == []


def test_short_ids_score_low_without_a_context_word(pii: PIIScanner) -> None:
    bare = pii.scan("Reference 123456782 was added.")
    assert [f.kind for f in bare] == ["national_id.nl_bsn"] and bare[0].score < 0.5
    labelled = pii.scan("Reference: BSN 123456782 was added.")
    assert labelled[0].kind == "national_id.nl_bsn" and labelled[0].score >= 0.9
    logged = pii.scan("user=7 bsn_nr=123456782 status=ok")  # "_" separates context words
    assert logged[0].score >= 0.9
    # a threshold drops the weak reading, keeps the labelled one
    policy = Policy([Rule(make_scanner("pii"), "redact", threshold=0.5)])
    assert policy.check("Reference 123456782 was added.").text == "Reference 123456782 was added."
    assert "123456782" not in policy.check("Reference: BSN 123456782 was added.").text
    # plain 9 digits are an SSN only next to the word
    assert [f.kind for f in pii.scan("SSN: 536904399")] == ["national_id.us_ssn"]


def test_kinds_option_selects_and_rejects(pii: PIIScanner) -> None:
    text = "ada@example.org, BSN 111222333, +44 20 7946 0958"
    emails = make_scanner("pii", kinds=["email"]).scan(text)
    assert [f.kind for f in emails] == ["email"]
    ids = make_scanner("pii", kinds=["national_id"]).scan(text)
    assert [f.kind for f in ids] == ["national_id.nl_bsn"]
    with pytest.raises(ConfigError, match=r"unknown kind 'nope' \(known kinds: .*email.*phone"):
        make_scanner("pii", kinds=["nope"])
    with pytest.raises(ConfigError, match="kinds must be a list"):
        make_scanner("pii", kinds="email")
    with pytest.raises(ConfigError, match="context_window"):
        make_scanner("pii", context_window=-1)
    with pytest.raises(ConfigError, match="bad options"):
        make_scanner("pii", colour="red")
    with pytest.raises(ConfigError, match=r"unknown kind 'secret\.nope'"):
        make_scanner("secrets", kinds=["secret.nope"])
    assert isinstance(pii, Scanner)


def test_a_megabyte_and_pathological_inputs_scan(pii: PIIScanner,
                                                 secrets_scanner: SecretsScanner) -> None:
    sentence = "Mail ada@example.org or call +44 20 7946 0958 about card 4111 1111 1111 1111. "
    big = (sentence * (1_000_000 // len(sentence) + 1))[:1_000_000]
    found = pii.scan(big)
    assert len(found) >= 3 * (1_000_000 // len(sentence)) - 3
    assert {f.kind for f in found} == {"email", "phone", "credit_card"}
    # long runs that make naive regexes backtrack: these would hang if scanning were not linear
    for bad in ["1 " * 200_000, "a" * 200_000 + "@", "1." * 200_000, "a:" * 200_000,
                "AB12 " * 100_000, "-----BEGIN RSA PRIVATE KEY-----" * 20_000,
                "password=" * 100_000, "eyJ" + "a" * 300_000, "@" * 200_000, "a@" * 100_000,
                "a.b@c." * 30_000, "ghp_" * 100_000]:
        pii.scan(bad)
        secrets_scanner.scan(bad)


# ---------------------------------------------------------------- secrets


def rnd(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def test_secrets_of_every_provider_are_found_with_exact_spans(
        secrets_scanner: SecretsScanner) -> None:
    jwt = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64({'sub': '42'})}.{rnd(43)}"
    tokens = {
        "secret.aws_access_key": "AKIA" + rnd(16, string.ascii_uppercase + string.digits),
        "secret.github": "ghp_" + rnd(36),
        "secret.anthropic": "sk-ant-api03-" + rnd(93, string.ascii_letters + string.digits + "_-"),
        "secret.openai": "sk-proj-" + rnd(48),
        "secret.slack": f"xoxb-{rnd(12, string.digits)}-{rnd(12, string.digits)}-{rnd(24)}",
        "secret.google_api": "AIza" + rnd(35),
        "secret.stripe": "sk_live_" + rnd(24),
        "secret.huggingface": "hf_" + rnd(34, string.ascii_letters),
        "secret.fmstack": "fms-" + secrets.token_urlsafe(32),
        "secret.jwt": jwt,
    }
    for kind, token in tokens.items():
        for text in (f"export API_TOKEN={token}\n", f"curl -H 'Authorization: Bearer {token}' x",
                     f'config = {{"key": "{token}"}}', f"here you go: {token}. thanks"):
            finding = only(secrets_scanner.scan(text), text, token)
            assert finding.kind == kind, (kind, text)
    pat = f"github_pat_{rnd(22)}_{rnd(59)}"
    assert only(secrets_scanner.scan(f"token: {pat}"), f"token: {pat}", pat).kind == "secret.github"
    aws = rnd(40, string.ascii_letters + string.digits + "/+")
    text = f"[default]\naws_secret_access_key = {aws}\nregion = eu-west-1"
    assert only(secrets_scanner.scan(text), text, aws).kind == "secret.aws_secret_key"


def test_private_key_block_is_one_finding(secrets_scanner: SecretsScanner) -> None:
    body = "\n".join(rnd(64, string.ascii_letters + string.digits + "+/") for _ in range(5))
    block = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----"
    text = f"my key:\n{block}\nthanks"
    finding = only(secrets_scanner.scan(text), text, block)
    assert finding.kind == "secret.private_key" and finding.score == 1.0
    cut = f"-----BEGIN RSA PRIVATE KEY-----\n{body}"
    (f,) = secrets_scanner.scan(cut + "\n\nand then the chat went on.")
    assert (f.start, f.end, f.kind) == (0, len(cut), "secret.private_key")


def test_assignments_are_scored_by_entropy(secrets_scanner: SecretsScanner) -> None:
    strong = rnd(32)
    text = f'DB_PASSWORD="hunter2"\nclient_secret: {strong}\n'
    weak, good = secrets_scanner.scan(text)
    assert text[weak.start:weak.end] == "hunter2" and weak.kind == "secret.assignment"
    assert text[good.start:good.end] == strong
    assert good.score > weak.score
    assert shannon_entropy("aaaa") == 0.0 and shannon_entropy("abcd") == 2.0


NOT_SECRETS = [
    "token = self.next_token()\nmax_tokens: 1024\nnum_tokens = 4096",
    "secret_key = settings.SECRET_KEY\napi_key = os.environ['OPENAI_API_KEY']",
    "api_key: ${OPENAI_API_KEY}\ntoken: <your-token-here>\npassword: changeme123",
    "The password is incorrect. Reset your token in the settings page.",
    "pip install scikit-learn; sk-learn tutorials; sk-xxxxxxxxxxxxxxxxxxxxxxxx",
    "from huggingface_hub import hf_hub_download; hf_hub_download(repo_id='x')",
    "__author__ = 'Ada Lovelace <ada@example.org>'  # Author: Ada",
    "AKIA is the prefix of AWS access key ids; ghp_ starts a GitHub token.",
    "def get_password(user: str) -> str:\n    return vault.read(user)\n",
]


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_ordinary_code_and_prose_are_not_secrets(secrets_scanner: SecretsScanner,
                                                 text: str) -> None:
    assert [(f.kind, text[f.start:f.end]) for f in secrets_scanner.scan(text)] == []


def test_real_python_sources_hold_no_secrets(secrets_scanner: SecretsScanner) -> None:
    import json as json_module
    import os
    import subprocess

    for mod in (os, subprocess, json_module.decoder, json_module.encoder):
        assert mod.__file__ is not None
        source = Path(mod.__file__).read_text()
        assert secrets_scanner.scan(source) == [], mod.__name__


# ---------------------------------------------------------------- vault


def test_vault_round_trip_and_consistent_placeholders(pii: PIIScanner) -> None:
    text = ("From ada@example.org: card 4111 1111 1111 1111, BSN 111222333. "
            "Cc bob@example.org and again ada@example.org.")
    vault = Vault()
    safe = vault.anonymize(text, pii.scan(text))
    assert safe == ("From <EMAIL_1>: card <CREDIT_CARD_1>, BSN <NL_BSN_1>. "
                    "Cc <EMAIL_2> and again <EMAIL_1>.")
    assert vault.restore(safe) == text
    # the model answers with placeholders reordered, repeated and one it made up
    answer = "Sent to <EMAIL_2>, <EMAIL_1>, <EMAIL_1>; <EMAIL_7> unknown; <NL_BSN_1>."
    assert vault.restore(answer) == ("Sent to bob@example.org, ada@example.org, "
                                     "ada@example.org; <EMAIL_7> unknown; 111222333.")
    # a later turn reuses the numbering
    assert vault.anonymize("ada@example.org", pii.scan("ada@example.org")) == "<EMAIL_1>"
    assert vault.mapping == {"<EMAIL_1>": "ada@example.org", "<CREDIT_CARD_1>":
                             "4111 1111 1111 1111", "<NL_BSN_1>": "111222333",
                             "<EMAIL_2>": "bob@example.org"}
    copy = Vault.from_json(vault.to_json())
    assert copy.mapping == vault.mapping
    assert copy.restore(safe) == text
    assert copy.placeholder("email", "carol@example.org") == "<EMAIL_3>"
    assert copy.placeholder("email", "bob@example.org") == "<EMAIL_2>"


def test_vault_rejects_bad_json() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        Vault.from_json("{nope")
    with pytest.raises(ConfigError, match="'mapping'"):
        Vault.from_json("[]")
    with pytest.raises(ConfigError, match="bad entry 'EMAIL'"):
        Vault.from_json({"mapping": {"EMAIL": "x"}})


def test_vault_is_thread_safe() -> None:
    vault = Vault()
    originals = [f"user{i}@example.org" for i in range(200)]
    seen: list[dict[str, str]] = []

    def work() -> None:
        seen.append({o: vault.placeholder("email", o) for o in originals})

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s == seen[0] for s in seen)  # every thread got the same placeholder per original
    assert sorted(seen[0].values()) == sorted(f"<EMAIL_{i}>" for i in range(1, 201))


def test_policy_redacts_through_the_vault_and_restores(pii: PIIScanner) -> None:
    key = "ghp_" + rnd(36)
    text = (f"Hi, I'm reachable at +44 20 7946 0958 or ada@example.org. IBAN "
            f"GB82 WEST 1234 5698 7654 32, token {key}, server 203.0.113.42.")
    vault = Vault()
    policy = Policy([Rule(make_scanner("pii"), "redact"), Rule(make_scanner("secrets"), "redact")],
                    redactor=vault)
    verdict = policy.check(text)
    assert verdict.ok
    assert verdict.text == ("Hi, I'm reachable at <PHONE_1> or <EMAIL_1>. IBAN <IBAN_1>, "
                            "token <GITHUB_1>, server <IP_ADDRESS_1>.")
    assert {f.action for f in verdict.findings} == {"redact"}
    assert vault.restore(verdict.text) == text
    # without a vault the placeholders are the irreversible labels
    plain = Policy([Rule(make_scanner("pii"), "redact")]).check("mail ada@example.org")
    assert plain.text == "mail [EMAIL]"
    blocked = Policy([Rule(make_scanner("secrets"), "block")]).check(f"key {key}")
    assert not blocked.ok and blocked.blocked is not None
    assert blocked.blocked.kind == "secret.github" and key not in blocked.blocked.detail
