"""PII scanner: emails, phone numbers, payment cards, IBANs, IP addresses and national IDs.

**How.** Each kind has a precompiled, linear-time regex that proposes candidates in the usual
written formats (with and without separators), and a validator that accepts or rejects each
candidate: python-stdnum for checksums (Luhn, mod 97, the Dutch 11-test, Verhoeff, ISO 7064,
the Spanish and Italian check letters, the Finnish mod 31), the ``ipaddress`` module for IP
addresses, and structural rules for the rest. Candidates of different kinds that overlap are
resolved to one reading: the highest score wins, ties go to the more specific kind (a card
number is never also a phone number; a Chinese RIC beats a card number that happens to pass
Luhn). A digit sequence is taken whole: a run of digit groups is never split to find an ID
inside it, so "4111 1111 1111 1111 2025" is one 20-digit number (and nothing).

**Scores** say how likely the reading is, and a policy's ``threshold`` decides:

* 0.9-1.0: strong evidence (email; IBAN; a Luhn-valid card with a known issuer prefix and
  length; IDs with long checksums or dates inside: fr NIR, it codice fiscale, cn RIC, fi HETU;
  any national ID with its context word nearby).
* 0.6-0.85: formatted numbers (NANP phone, "123.456.789-09" CPF, "YYMMDD-NNNN" personnummer,
  "123-45-6789" SSN, Spanish DNI/NIE letters).
* 0.4-0.5: short all-digit IDs in plain form with no context word nearby (BSN, NHS, Aadhaar,
  personnummer, CPF): one random number in 10 (Luhn, Verhoeff), 11 (11-test, mod 11) or 100
  (CPF) passes such a checksum by chance, so "123456782" alone is only a weak BSN. A context
  word (BSN, NHS, Aadhaar, CPF, personnummer, SSN, IBAN, card, phone, ...) within
  ``context_window`` characters before the value (or half that after it) lifts the score.
  ``threshold: 0.5`` drops the weak readings; 0.0 (the default) redacts them too.

**Decisions.** A dotted quad right after a version word ("version 1.2.3.4", "v 10.0.0.1",
"build", "release", "firmware") is a version number, not an IP address. IPv6 needs two
non-empty groups and a decimal digit ("A::B" in C++ is not an address). US SSNs have no
checksum: only the 3-2-4 dashed form is reported without a context word. Phone numbers need
phone-like formatting: a leading "+" with 8-15 digits, a trunk "0" prefix with separators
(UK, DE, FR, NL style), NANP "555-123-4567"/"(555) 123-4567", or a dashed 7-digit local
number (the last only with a context word: "854-1987" is more often a range); plain digit
runs, dates, times, versions and card/IBAN digits are not phones.

**Blind spots.** Phone formats outside those families (e.g. national numbers without a trunk
prefix other than NANP); lowercase IBANs and codice fiscale; IBANs spaced other than in groups
of four; national IDs of countries not listed in ``KINDS``; e-mail addresses obfuscated as
"ada at example dot org"; identifiers split across lines; names and street addresses (no NER).
"""

from __future__ import annotations

import bisect
import importlib
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import ClassVar

from fmstack.errors import ConfigError, missing
from fmstack.guard.core import Finding

# _D is the first digit of a number that does not continue a longer one: not after a word char,
# "+", "/", "@", nor after a digit and a separator ("12 4111..." or "3.14159..."); _NA: not
# followed by more of the same. Patterns start with a character (class) and check what came
# before with a lookbehind after it: the regex engine then skips ahead to candidate characters,
# which made the scan four times faster than a leading lookbehind.
_D = r"\d(?<![\w+/@]\d)(?<!\d[.:\- ]\d)"
_NA = r"(?!\w)(?![.:]\d|[\- ]\d)"
_WA = r"(?!\w)"

Check = Callable[[str], tuple[float, str] | None]


@dataclass(frozen=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    check: Check  # the matched text -> (score without context, detail) or None when invalid
    context: re.Pattern[str] | None  # words that make this reading likely when nearby
    context_score: float  # the score when a context word is near
    specificity: int  # breaks score ties between overlapping kinds: higher wins
    context_required: bool = False  # only report when a context word is near
    needs_context_below: float = 0.0  # readings scored below this need a context word


def _ctx(words: str) -> re.Pattern[str]:
    # "_" separates words here: "nhs_number=..." in a log line, a CSV header "bsn_nr"
    return re.compile(r"(?<![^\W_])(?:" + words + r")(?![^\W_])", re.IGNORECASE)


_STDNUM: dict[str, ModuleType] = {}


def _std(name: str) -> ModuleType:
    """A python-stdnum module, imported on first use (the package is the ``guard`` extra)."""
    mod = _STDNUM.get(name)
    if mod is None:
        try:
            mod = importlib.import_module("stdnum." + name)
        except ImportError as e:
            raise missing("python-stdnum", "guard") from e
        _STDNUM[name] = mod
    return mod


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def _formatted(s: str) -> bool:
    return not s.isalnum()


# ---------------------------------------------------------------- email

# An address is found from its "@": the local part (at most 64 characters) is matched back to
# the "@", the domain forward from it. Running one email regex at every word start cost more
# than all the other kinds together, and searching a window around each "@" was quadratic on
# text full of "@"s.
_LOCAL_RE = re.compile(r"(?<![\w.%+-])[^\W_][\w.%+-]{0,63}\Z")
_DOMAIN_RE = re.compile(r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])")
_EMAIL_RE = re.compile(_LOCAL_RE.pattern[:-2] + "@" + _DOMAIN_RE.pattern)  # for reference
_AT_RE = re.compile(r"(?<=[\w.%+-])@(?=[^\W_])")  # an "@" that can join a local part and domain
# "icon@2x.png" is a file name, not an address.
_FILE_TLDS = frozenset(["png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "css", "js",
                        "ts", "py", "json", "yaml", "yml"])


def _find_emails(text: str) -> Iterator[tuple[int, int]]:
    """Spans of e-mail addresses, found around each "@" in linear time."""
    pos = 0
    for m in _AT_RE.finditer(text):
        at = m.start()
        if at < pos:
            continue
        lo = max(pos, at - 64, text.rfind("@", max(0, at - 64), at) + 1)  # no "@" in a local part
        local = _LOCAL_RE.search(text, lo, at)
        domain = _DOMAIN_RE.match(text, at + 1, at + 256) if local else None
        if local and domain:
            yield local.start(), domain.end()
            pos = domain.end()


def _check_email(s: str) -> tuple[float, str] | None:
    if s.rsplit(".", 1)[1].lower() in _FILE_TLDS or ".." in s:
        return None
    return 1.0, "e-mail address"


# ---------------------------------------------------------------- IP addresses

_IPV4_RE = re.compile(r"\d(?<![\w.:]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\w|\.\d)")
_IPV6_RE = re.compile(
    r"(?::(?<![\w:.]:)|[0-9A-Fa-f](?<![\w:.][0-9A-Fa-f])[0-9A-Fa-f]{0,3}:)"
    r"(?:[0-9A-Fa-f]{0,4}:){1,6}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:])"
)
_VERSION_BEFORE = re.compile(
    r"(?:\bv|\bversion|\bver\.?|\brelease|\bbuild|\bfirmware|\bfw|\bsdk|\bOID)\s*[:=]?\s*$",
    re.IGNORECASE,
)


def _check_ipv4(s: str) -> tuple[float, str] | None:
    try:
        ip = ipaddress.IPv4Address(s)
    except ValueError:
        return None
    return (0.9, "public IPv4 address") if ip.is_global else (0.6, "non-public IPv4 address")


def _check_ipv6(s: str) -> tuple[float, str] | None:
    groups = [g for g in s.split(":") if g]
    if len(groups) < 2 or not any(c.isdigit() for c in s):
        return None
    try:
        ip = ipaddress.IPv6Address(s)
    except ValueError:
        return None
    return (0.9, "public IPv6 address") if ip.is_global else (0.7, "non-public IPv6 address")


# ---------------------------------------------------------------- payment cards

_CARD_RE = re.compile(
    _D + r"(?:\d{12,18}"
    r"|\d{3}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{1,3})?"
    r"|\d{3}(?P<t>[ -])\d{6}(?P=t)\d{4,5})" + _NA
)

# (issuer, lowest prefix, highest prefix, prefix length, allowed lengths), from the issuers'
# published IIN ranges.
_ISSUERS: tuple[tuple[str, int, int, int, tuple[int, ...]], ...] = (
    ("Visa", 4, 4, 1, (13, 16, 19)),
    ("Mastercard", 51, 55, 2, (16,)),
    ("Mastercard", 2221, 2720, 4, (16,)),
    ("American Express", 34, 34, 2, (15,)),
    ("American Express", 37, 37, 2, (15,)),
    ("Discover", 6011, 6011, 4, (16, 17, 18, 19)),
    ("Discover", 644, 649, 3, (16, 17, 18, 19)),
    ("Discover", 65, 65, 2, (16, 17, 18, 19)),
    ("Diners Club", 300, 305, 3, (14, 15, 16, 17, 18, 19)),
    ("Diners Club", 36, 36, 2, (14, 15, 16, 17, 18, 19)),
    ("Diners Club", 38, 39, 2, (16, 17, 18, 19)),
    ("JCB", 3528, 3589, 4, (16, 17, 18, 19)),
    ("UnionPay", 62, 62, 2, (16, 17, 18, 19)),
    ("Maestro", 5018, 5018, 4, (13, 14, 15, 16, 17, 18, 19)),
    ("Maestro", 5020, 5020, 4, (13, 14, 15, 16, 17, 18, 19)),
    ("Maestro", 5038, 5038, 4, (13, 14, 15, 16, 17, 18, 19)),
    ("Maestro", 6304, 6304, 4, (13, 14, 15, 16, 17, 18, 19)),
    ("Maestro", 6759, 6759, 4, (13, 14, 15, 16, 17, 18, 19)),
    ("Mir", 2200, 2204, 4, (16, 17, 18, 19)),
)


def card_issuer(digits: str) -> str | None:
    """The issuer whose IIN range and length ``digits`` fits, or None."""
    for issuer, lo, hi, plen, lengths in _ISSUERS:
        if len(digits) in lengths and lo <= int(digits[:plen]) <= hi:
            return issuer
    return None


def _check_card(s: str) -> tuple[float, str] | None:
    d = _digits(s)
    issuer = card_issuer(d)
    if issuer is None or not _std("luhn").is_valid(d):
        return None
    return 0.95, f"Luhn-valid {issuer} card number ({len(d)} digits)"


# ---------------------------------------------------------------- IBAN

_IBAN_RE = re.compile(
    r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)" + _WA
)


_IBAN_LENGTHS: dict[str, int] = {}


def _iban_length(cc: str) -> int:
    """The IBAN length for a country code (0: not an IBAN country; -1: unknown, when stdnum's
    registry has another shape than the one read here), from stdnum's registry."""
    if not _IBAN_LENGTHS:
        try:
            numdb = _std("numdb").get("iban")
            for _, low, _, props, _ in numdb.prefixes:  # (length, low, high, props, children)
                spec = props.get("bban", "")
                _IBAN_LENGTHS[low] = 4 + sum(int(n) for n in re.findall(r"(\d+)!", spec))
        except (AttributeError, TypeError, ValueError):
            _IBAN_LENGTHS["?"] = -1
    return _IBAN_LENGTHS.get("?", _IBAN_LENGTHS.get(cc, 0))


def _check_iban(s: str) -> tuple[float, str] | None:
    # the length check first: stdnum's full validation is slow on long runs of look-alikes
    length = _iban_length(s[:2])
    if (length >= 0 and len(s) - s.count(" ") != length) or not _std("iban").is_valid(s):
        return None
    return 1.0, f"IBAN ({s[:2]}) with a valid mod-97 checksum"


# ---------------------------------------------------------------- national IDs


def _stdnum_check(module: str, plain: float, formatted: float, what: str) -> Check:
    def check(s: str) -> tuple[float, str] | None:
        if not _std(module).is_valid(s):
            return None
        return (formatted if _formatted(s) else plain), what

    return check


def _check_ssn(s: str) -> tuple[float, str] | None:
    if not _std("us.ssn").is_valid(s.replace(" ", "-")):
        return None
    return (0.6 if "-" in s else 0.5), "US SSN (structural rules only, no checksum)"


def _check_nie(s: str) -> tuple[float, str] | None:
    return _stdnum_check("es.nie", 0.85, 0.85, "Spanish NIE with a valid check letter")(
        s.replace("-", "").replace(" ", ""))


def _check_dni(s: str) -> tuple[float, str] | None:
    return _stdnum_check("es.dni", 0.8, 0.8, "Spanish DNI with a valid check letter")(
        s.replace("-", "").replace(" ", ""))


def _check_personnummer(s: str) -> tuple[float, str] | None:
    if not _std("se.personnummer").is_valid(s):
        return None
    return (0.75 if _formatted(s) else 0.4), "Swedish personnummer (date and Luhn check)"


# ---------------------------------------------------------------- phone numbers

_PHONE_TAIL = r"(?:(?:[ .\-]|(?<=\))\ ?)(?:\(\d{1,5}\)|\d{1,8})){1,6}"
_PHONE_RE = re.compile(
    r"(?:\+(?<![\w+/@]\+)(?:\d{7,15}|\ ?\d{1,4}" + _PHONE_TAIL + r")"
    r"|\((?<![\w+/@]\()\+?\d{1,5}\)" + _PHONE_TAIL +
    r"|" + _D + r"\d{0,7}" + _PHONE_TAIL + r")" + _NA
)
_GROUP_RE = re.compile(r"\d+")
_SEP_RE = re.compile(r"\d([ .\-])\d")


def _phone_shape(s: str) -> tuple[float, str] | None:
    groups = _GROUP_RE.findall(s)
    n = sum(len(g) for g in groups)
    if not 7 <= n <= 15:
        return None
    if s.startswith("+") or s.startswith("(+"):
        return (0.85, "international phone number") if n >= 8 else None
    if len(set(_SEP_RE.findall(s))) > 1:  # mixed separators: CPF, dates with times, ...
        return None
    sizes = [len(g) for g in groups]
    if groups[0].startswith("00") and len(groups[0]) <= 4 and n >= 10:
        return 0.8, "international phone number (00 prefix)"
    if s.startswith("(") and 9 <= n <= 12:
        return 0.75, "phone number with area code"
    if sizes == [3, 3, 4] and " " in s and "(" not in s:
        # NHS numbers are written this way too: a mod-11-valid one (score 0.6) wins
        return 0.55, "phone number (3-3-4 digits, also the NHS number layout)"
    nanp = sizes == [3, 3, 4] or (sizes == [1, 3, 3, 4] and groups[0] == "1")
    if nanp and groups[-3][0] in "23456789":
        return 0.65, "North American phone number"
    if (groups[0].startswith("0") and 2 <= len(groups[0]) <= 5 and 9 <= n <= 12
            and sizes != [3, 2, 4]  # the SSN layout
            and not (sizes == [4, 2, 3] and "." in s)  # the BSN layout
            and 2 <= len(groups) <= 5 and min(sizes[1:]) >= 2):
        return 0.7, "national phone number (trunk prefix 0)"
    if sizes == [3, 4] and "-" in s and groups[0][0] in "23456789":
        return 0.5, "local phone number"
    return None


# ---------------------------------------------------------------- the detectors

_CC_CTX = _ctx(r"card|credit|debit|visa|mastercard|amex|american express|cc|pan|cvv|expiry")
_ID_WORDS: dict[str, str] = {
    "nl_bsn": r"bsn|burgerservicenummer|sofinummer|sofi",
    "fr_nir": r"nir|insee|s[ée]curit[ée] sociale|num[ée]ro de s[ée]cu|social security",
    "es_dni": r"dni|nif|documento nacional|id",
    "es_nie": r"nie|nif|extranjero|id",
    "it_codice_fiscale": r"codice fiscale|cf|c\.f\.|fiscal code|tax code",
    "fi_hetu": r"hetu|henkil[öo]tunnus|sotu|personal identity code",
    "se_personnummer": r"personnummer|personnr|pnr|personal identity number",
    "in_aadhaar": r"aadhaar|aadhar|uidai|uid",
    "gb_nhs": r"nhs",
    "cn_ric": r"ric|resident identity|identity card|id card|身份证|身份证号",
    "br_cpf": r"cpf|cadastro de pessoas",
    "us_ssn": r"ssn|social security|soc\.? sec\.?",
}


def _nid(cc_name: str, regex: str, check: Check, specificity: int,
         context_score: float = 0.95, required: bool = False) -> _Detector:
    return _Detector(f"national_id.{cc_name}", re.compile(regex), check,
                     _ctx(_ID_WORDS[cc_name]), context_score, specificity, required)


_DETECTORS: tuple[_Detector, ...] = (
    _Detector("email", _EMAIL_RE, _check_email, None, 1.0, 100),
    _Detector("credit_card", _CARD_RE, _check_card, _CC_CTX, 1.0, 80),
    _Detector("iban", _IBAN_RE, _check_iban, _ctx(r"iban|account|bank|transfer|sepa"), 1.0, 90),
    _nid("cn_ric", _D + r"\d{16}[\dXx]" + _NA,
         _stdnum_check("cn.ric", 0.97, 0.97, "Chinese resident ID (date, place, check digit)"),
         85, 1.0),
    _nid("it_codice_fiscale",
         r"[A-Z](?<!\w[A-Z])[A-Z]{5}[\dLMNPQRSTUV]{2}[ABCDEHLMPRST][\dLMNPQRSTUV]{2}[A-Z]"
         r"[\dLMNPQRSTUV]{3}[A-Z]" + _WA,
         _stdnum_check("it.codicefiscale", 0.95, 0.95,
                       "Italian codice fiscale with a valid check letter"), 85, 1.0),
    _nid("fr_nir",
         r"[1-478](?<![\w+/@][1-478])(?<!\d[.:\- ][1-478])"
         r"(?:\d{4}(?:\d{2}|2[AB])\d{8}| \d{2} \d{2} (?:\d{2}|2[AB]) \d{3} \d{3} \d{2})" + _NA,
         _stdnum_check("fr.nir", 0.9, 0.9, "French NIR with a valid mod-97 key"), 85, 1.0),
    _nid("fi_hetu", r"\d(?<!\w\d)\d{5}[-+A-FU-Y]\d{3}[0-9A-FHJ-NPR-Y]" + _WA,
         _stdnum_check("fi.hetu", 0.9, 0.9, "Finnish HETU (date and mod-31 check)"), 75, 1.0),
    _nid("es_nie", r"[XYZ](?<!\w[XYZ])[- ]?\d{7}[- ]?[A-Z]" + _WA, _check_nie, 75),
    _nid("es_dni", _D + r"\d{7}[- ]?[A-Z]" + _WA, _check_dni, 70),
    _nid("br_cpf", _D + r"(?:\d{2}\.\d{3}\.\d{3}-\d{2}|\d{8}-\d{2}|\d{10})" + _NA,
         _stdnum_check("br.cpf", 0.5, 0.85, "Brazilian CPF with valid check digits"), 60),
    _nid("se_personnummer", _D + r"(?:\d{5}[-+]\d{4}|\d{7}[-+]?\d{4}|\d{9})" + _NA,
         _check_personnummer, 50),
    _nid("gb_nhs", _D + r"(?:\d{9}|\d{2}(?P<s>[ -])\d{3}(?P=s)\d{4})" + _NA,
         _stdnum_check("gb.nhs", 0.4, 0.6, "NHS number passing the mod-11 check"), 55),
    _nid("nl_bsn", _D + r"(?:\d{8}|\d{3}\.\d{2}\.\d{3}|\d{2}(?P<s>[ .])\d{3}(?P=s)\d{3})" + _NA,
         _stdnum_check("nl.bsn", 0.4, 0.6, "Dutch BSN passing the 11-test"), 55),
    _nid("in_aadhaar", _D + r"(?:\d{11}|\d{3}(?P<s>[ -])\d{4}(?P=s)\d{4})" + _NA,
         _stdnum_check("in_.aadhaar", 0.4, 0.6, "Aadhaar number passing the Verhoeff check"),
         55),
    _nid("us_ssn", _D + r"\d{2}-\d{2}-\d{4}" + _NA, _check_ssn, 40),
    _nid("us_ssn", _D + r"(?:\d{2} \d{2} \d{4}|\d{8})" + _NA, _check_ssn, 40, 0.85, True),
    _Detector("ip_address", _IPV4_RE, _check_ipv4, _ctx(r"ip|address|host|server|client"),
              0.95, 30),
    _Detector("ip_address", _IPV6_RE, _check_ipv6, _ctx(r"ip|ipv6|address|host|server"),
              0.95, 30),
    _Detector("phone", _PHONE_RE, _phone_shape,
              _ctx(r"phone|tel|telephone|mobile|cell|call|fax|whatsapp|sms|ring|text me|"
                   r"contact|reach me|t\.|m\."), 0.9, 10, needs_context_below=0.55),
)

# Every kind the scanner can report; national IDs can also be selected as a group.
KINDS: tuple[str, ...] = tuple(dict.fromkeys(d.kind for d in _DETECTORS))
_NEEDS_STDNUM = frozenset(k for k in KINDS if k not in ("email", "phone", "ip_address"))


@dataclass(frozen=True)
class _Candidate:
    start: int
    end: int
    score: float
    detector: _Detector
    detail: str


class PIIScanner:
    """Finds personal data (see the module docstring for kinds, scores and blind spots).

    ``kinds`` limits the scan to some kinds (``"national_id"`` selects every national ID);
    ``context_window`` is how many characters before a value are searched for a context word
    (half as many after it).
    """

    name: ClassVar[str] = "pii"

    def __init__(self, *, kinds: list[str] | None = None, context_window: int = 40) -> None:
        if not isinstance(context_window, int) or context_window < 0:
            raise ConfigError(f"pii: context_window must be a non-negative integer, "
                              f"got {context_window!r}")
        self.context_window = context_window
        selected = set(KINDS if kinds is None else self._expand(kinds))
        self.kinds = [k for k in KINDS if k in selected]
        self._detectors = [d for d in _DETECTORS if d.kind in selected]
        if selected & _NEEDS_STDNUM:
            _std("luhn")  # fail now, with the install hint, rather than on the first scan

    @staticmethod
    def _expand(kinds: list[str]) -> list[str]:
        if isinstance(kinds, str) or not isinstance(kinds, list | tuple):
            raise ConfigError(f"pii: kinds must be a list of kind names, got {kinds!r}")
        out: list[str] = []
        for k in kinds:
            group = [known for known in KINDS if known.startswith(str(k) + ".")]
            if k in KINDS:
                out.append(k)
            elif group:
                out.extend(group)
            else:
                raise ConfigError(f"pii: unknown kind {k!r} (known kinds: national_id, "
                                  f"{', '.join(KINDS)})")
        return out

    def _near(self, pattern: re.Pattern[str], text: str, start: int, end: int) -> bool:
        w = self.context_window
        return bool(pattern.search(text, max(0, start - w), start)
                    or pattern.search(text, end, min(len(text), end + w // 2)))

    def _candidates(self, text: str) -> list[_Candidate]:
        found: list[_Candidate] = []
        for det in self._detectors:
            spans = (_find_emails(text) if det.kind == "email"
                     else (m.span() for m in det.pattern.finditer(text)))
            for start, end in spans:
                value = text[start:end]
                if det.kind == "ip_address" and "." in value and _VERSION_BEFORE.search(
                        text, max(0, start - 12), start):
                    continue
                checked = det.check(value)
                if checked is None and det.kind in ("phone", "iban"):
                    # the greedy match may have swallowed a trailing group ("... 4567 2 times")
                    start, end, checked = _shorter(det, value, start)
                if checked is None:
                    continue
                score, detail = checked
                near = det.context is not None and self._near(det.context, text, start, end)
                if not near and (det.context_required or score < det.needs_context_below):
                    continue
                if near:
                    score = max(score, det.context_score)
                    detail += ", with a context word nearby"
                found.append(_Candidate(start, end, score, det, detail))
        return found

    def scan(self, text: str) -> list[Finding]:
        ranked = sorted(self._candidates(text),
                        key=lambda c: (-c.score, -c.detector.specificity, c.start - c.end))
        chosen = [ranked[i] for i in non_overlapping([(c.start, c.end) for c in ranked])]
        chosen.sort(key=lambda c: c.start)
        return [Finding(self.name, c.detector.kind, c.start, c.end, round(c.score, 3), c.detail)
                for c in chosen]


def non_overlapping(spans: list[tuple[int, int]]) -> list[int]:
    """Indices of the spans kept when each, in order of preference, is kept unless it overlaps
    one kept before; O(n log n) plus list inserts, so thousands of candidates stay cheap."""
    starts: list[int] = []
    ends: list[int] = []
    kept: list[int] = []
    for i, (s, e) in enumerate(spans):
        j = bisect.bisect_right(starts, s)
        if (j > 0 and ends[j - 1] > s) or (j < len(starts) and starts[j] < e):
            continue
        starts.insert(j, s)
        ends.insert(j, e)
        kept.append(i)
    return kept


def _shorter(det: _Detector, value: str, start: int) -> tuple[int, int, tuple[float, str] | None]:
    """Drop up to two trailing space-delimited groups until the value validates (a word after
    the number, "... 4567 2 times"; never a "-" or "." group: "064.446.909-54" is one number)."""
    cut = value
    for _ in range(2):
        i = cut.rfind(" ")
        if i <= 0:
            break
        cut = cut[:i]
        checked = det.check(cut)
        if checked is not None:
            return start, start + len(cut), checked
    return start, start + len(value), None
