"""The configuration reference (docs/configuration.md) and the README stay true to the code.

The code is asked, not read: every object of every JSON example in the docs gets an unknown
field (`__probe__`), and `tollgate check` (the filter's own `on_configure` validation) answers
with the field list of that object (`…: unknown field, expected one of a, b, c`), or, for a map
such as `pricing`, with an error about the entry. So a field added to the code but not to the
docs fails here, however config.rs is laid out. The tests also run every ```json example
(it must be accepted), every documented error (`JSON` → `message`: it must be refused with
that message) and check that the README names every environment variable the repository reads.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

import envoyctl
from conftest import KEY_A, KEY_B, base_config, sha

ROOT = envoyctl.ROOT
DOC = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
CLI = ROOT / "target" / "release" / "tollgate"
PROBE = "__probe__"
FAKE_KEY = "sk-FAKE-docs-test-key-0000"

FENCE = re.compile(r"^```json[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
# A documented error: a JSON configuration in backticks, an arrow, the message in backticks.
ERROR_EXAMPLE = re.compile(r"`(\{[^`]*\})`\s*→\s*`([^`]+)`")
UNKNOWN = re.compile(r"^(.*)\." + PROBE + r": unknown field, expected one of (.*)$", re.M)


@pytest.fixture(scope="module")
def cli() -> Path:
    """`target/release/tollgate`, built (or found up to date) by cargo."""
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if Path(cargo).exists():
        r = subprocess.run([cargo, "build", "-q", "--release", "-p", "tollgate-cli"], cwd=ROOT,
                           capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stderr[-3000:]
    if not CLI.exists():
        pytest.skip("cargo is not available and target/release/tollgate is not built")
    return CLI


def key_envs(node) -> set[str]:
    """Every `key_env` value in a configuration."""
    if isinstance(node, dict):
        found = {node["key_env"]} if isinstance(node.get("key_env"), str) else set()
        return found.union(*(key_envs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(key_envs(v) for v in node))
    return set()


def check(cli: Path, config: dict | str, keys: bool = True) -> subprocess.CompletedProcess:
    """`tollgate check -` on `config`, with no TOLLGATE_* variable from the caller's
    environment, and (with `keys`) every `key_env` it names set to a fake key."""
    text = config if isinstance(config, str) else json.dumps(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    if keys:
        env.update({n: FAKE_KEY for n in key_envs(json.loads(text))})
    return subprocess.run([str(cli), "check", "-"], input=text, capture_output=True, text=True,
                          env=env, timeout=30)


def json_examples(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


def error_examples() -> list[tuple[str, str]]:
    return ERROR_EXAMPLE.findall(DOC.read_text())


def schema_path(error_path: str, one_grammar: bool = True) -> str:
    """A field path as the filter names it (`consumers[1].limits[0]`, `pricing["m*"]`) in the
    docs' spelling: indexes as `[]`, map keys as `.<>`, and (`one_grammar`) every
    `….limits[]` as the one limit grammar, `limits[]`."""
    p = re.sub(r"\[\d+\]", "[]", error_path)
    p = re.sub(r'\["(?:[^"\\]|\\.)*"\]', ".<>", p)
    return re.sub(r"^.*\blimits\[\]", "limits[]", p) if one_grammar else p


def documented(path: str, text: str) -> bool:
    """Whether the docs name `path` in backticks (`.<>` standing for any `.<name>`)."""
    pattern = re.escape(path).replace(re.escape(".<>"), r"\.<[^>`]+>")
    return re.search("`" + pattern + "`", text) is not None


def objects(node, at=()):
    """Every JSON object in a document, with its location (keys and indexes)."""
    if isinstance(node, dict):
        yield at, node
        for k, v in node.items():
            yield from objects(v, at + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from objects(v, at + (i,))


def located(doc, at):
    for step in at:
        doc = doc[step]
    return doc


@functools.lru_cache(maxsize=None)
def code_fields(cli: Path) -> dict[str, set[str]]:
    """What the code accepts, learnt by probing the objects of the docs' examples: for each
    object (in the docs' spelling) the fields the filter lists; maps (`pricing`, `headers`)
    have none of their own."""
    fields: dict[str, set[str]] = {}
    for text in json_examples(DOC):
        doc = json.loads(text)
        for at, obj in objects(doc):
            probed = copy.deepcopy(doc)
            located(probed, at)[PROBE] = 0
            r = check(cli, probed)
            m = UNKNOWN.search(r.stderr)
            if m:
                fields.setdefault(schema_path(m.group(1)), set()).update(m.group(2).split(", "))
            elif at and spelled(at) not in MAPS:
                raise AssertionError(f"the probe at {spelled(at)} was not answered with the "
                                     f"object's fields: {r.stderr.strip()}")
    top = check(cli, {PROBE: 0})
    m = re.search(PROBE + r": unknown field, expected one of (.*)$", top.stderr, re.M)
    assert m, f"the top-level probe was not refused as an unknown field: {top.stderr}"
    fields[""] = set(m.group(1).split(", "))
    return fields


def field_paths(fields: dict[str, set[str]]) -> list[str]:
    return sorted(f"{obj}.{f}" if obj else f for obj, names in fields.items() for f in names)


def test_every_json_example_in_the_docs_passes_tollgate_check(cli):
    examples = [(p.name, t) for p in (DOC, README) for t in json_examples(p)]
    assert len([e for e in examples if e[0] == DOC.name]) >= 3, "the reference has examples"
    failures = []
    for where, text in examples:
        r = check(cli, text)
        if r.returncode != 0:
            failures.append(f"{where}: {r.stderr.strip()}\n{text[:300]}")
    assert not failures, "\n\n".join(failures)


def test_every_documented_error_is_the_message_tollgate_check_gives(cli):
    examples = error_examples()
    assert len(examples) >= 40, "each field documents an error"
    failures = []
    for config, message in examples:
        r = check(cli, config, keys=False)
        lines = r.stderr.splitlines()
        if r.returncode != 1 or not any(ln == message or ln.endswith(": " + message)
                                        for ln in lines):
            failures.append(f"{config}\n  want: {message}\n  got:  exit {r.returncode} "
                            f"{(r.stderr or r.stdout).strip()}")
    assert not failures, f"{len(failures)} of {len(examples)} wrong:\n" + "\n".join(failures)


def test_every_field_the_code_accepts_is_documented(cli):
    fields = code_fields(cli)
    text = DOC.read_text()
    # The probe must have reached inside the examples, not only the top level.
    assert {"consumers[]", "limits[]", "accounts[]", "selection.affinity",
            "pricing.<>"} <= set(fields), sorted(fields)
    missing = [p for p in field_paths(fields) if not documented(p, text)]
    assert not missing, ("fields the code accepts that docs/configuration.md does not name "
                         f"(in backticks, e.g. `{missing[0]}`): {missing}")


def spelled(at: tuple) -> str:
    """A location in an example (keys and indexes) in the docs' spelling."""
    out = ""
    for step in at:
        if isinstance(step, int):
            out += "[]"
        elif schema_path(out) in MAPS:
            out += ".<>"
        else:
            out += f".{step}" if out else step
    return schema_path(out)


# Objects whose keys are names the operator chooses, not fields.
MAPS = {"pricing", "accounts[].headers"}


def test_every_field_has_an_example_and_an_error(cli):
    fields = code_fields(cli)
    set_in_examples: set[str] = set()
    for text in json_examples(DOC):
        for at, obj in objects(json.loads(text)):
            if spelled(at) not in MAPS:
                set_in_examples |= {spelled(at + (k,)) for k in obj}
    no_example = [p for p in field_paths(fields) if p not in set_in_examples]
    assert not no_example, f"fields no ```json example in the docs sets: {no_example}"

    error_fields = {schema_path(m.split(": ", 1)[0], one_grammar)
                    for _, m in error_examples() for one_grammar in (True, False)}
    no_error = [p for p in field_paths(fields)
                if not any(e == p or e.startswith(p + ".") or e.startswith(p + "[")
                           for e in error_fields)]
    assert not no_error, f"fields with no documented error (`JSON` → `message`): {no_error}"


def test_the_probe_tells_maps_from_objects(cli):
    """The two maps answer the probe with an error about the entry, not an unknown field."""
    for config, path in [({"pricing": {PROBE: 0}}, f'pricing["{PROBE}"]'),
                         ({"accounts": [{"name": "a", "provider": "openai", "key": "k",
                                         "headers": {PROBE: 0}}]},
                          f'accounts[0].headers["{PROBE}"]')]:
        r = check(cli, config)
        assert r.returncode == 1 and r.stderr.startswith(path + ": "), r.stderr
        assert "unknown field" not in r.stderr
    fields = code_fields(cli)
    assert not MAPS & set(fields), "a map answered like an object: update MAPS"


# ---- the README ---------------------------------------------------------------------------

def env_vars_the_repository_reads() -> set[str]:
    """Variables the demo, the shipped configs and the Makefile's targets read."""
    names: set[str] = set()
    for py in [ROOT / "tests" / "run.py", ROOT / "tests" / "soak.py", ROOT / "tests" / "envoyctl.py",
               ROOT / "tests" / "ratelimitctl.py"]:
        names |= set(re.findall(r"""environ\.get\(\s*["']([A-Z][A-Z0-9_]+)["']""", py.read_text()))
        names |= set(re.findall(r"""environ\[\s*["']([A-Z][A-Z0-9_]+)["']""", py.read_text()))
    for yml in (ROOT / "envoy").rglob("*.yaml"):
        for keys in re.findall(r"host_env_keys:\s*\[([^\]]*)\]", yml.read_text()):
            names |= {k.strip() for k in keys.split(",") if k.strip()}
    make = (ROOT / "Makefile").read_text()
    names |= set(re.findall(r"\$\(or \$\(([A-Z][A-Z0-9_]+)\)", make))   # FUZZ_SECONDS
    names |= set(re.findall(r"\b([A-Z][A-Z0-9_]+)=[0-9]", make))          # SOAK_SECONDS=180
    names |= set(re.findall(r"\b([A-Z][A-Z0-9_]+)=\S+ func-e\b", make))   # ENVOY_PATH
    names |= set(re.findall(r"\$\((BENCH_ARGS)\)", make))
    return names


def test_the_readme_names_every_environment_variable():
    names = env_vars_the_repository_reads()
    assert {"TOLLGATE_PORT", "TOLLGATE_ADMIN_PORT", "TOLLGATE_MOCK_PORT", "TOLLGATE_VLLM_KEY",
            "TOLLGATE_ANTHROPIC_KEY_1", "ENVOY_PATH", "ANTHROPIC_API_KEYS"} <= names, names
    text = README.read_text()
    missing = sorted(n for n in names - {"PATH", "HOME"} if f"`{n}`" not in text and not re.search(
        rf"`{re.escape(n)}=", text))
    assert not missing, f"README.md does not name (in backticks): {missing}"


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub makes them."""
    slugs = set()
    for title in re.findall(r"^#{1,6} (.+)$", page.read_text(), re.M):
        slugs.add(re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-"))
    return slugs


def test_the_readme_and_docs_link_only_inside_the_repository():
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            assert not re.match(r"[a-z]+:", target), f"{page.name} links to a web page: {target}"
            path = target.split("#", 1)[0]
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.is_relative_to(ROOT), f"{page.name} links outside: {target}"
            assert resolved.exists(), f"{page.name} links to a missing file: {target}"
            if "#" in target and resolved.suffix == ".md":
                anchor = target.split("#", 1)[1]
                assert anchor in anchors(resolved), f"{page.name}: no heading for {target}"
        # The changelog is the lead's record of contract changes; the rest is for users.
        text = text.split("\n## Changelog", 1)[0]
        assert "SPEC" not in text, f"{page.name} refers to SPEC, which a clone does not have"


def test_the_readme_meaning_of_x_ratelimit_reset_holds(make_envoy):
    """README "Rate-limit headers": a sliding per-minute window reports the end of the *next*
    minute (60–120 s, e.g. 117 s at 3 s into a minute), a fixed one the end of this minute."""
    cfg = base_config(consumers=[
        {"name": "team-a", "keys": [KEY_A], "limits": [{"tokens": 1_000_000, "per": "minute"}]},
        {"name": "team-b", "keys": [sha(KEY_B)],
         "limits": [{"tokens": 1_000_000, "per": "minute", "window": "fixed"}]},
    ])
    e = make_envoy(cfg)
    body = {"model": "claude-haiku-4-5", "max_tokens": 16,
            "messages": [{"role": "user", "content": "Hello"}]}
    for key, window_ends in [(KEY_A, 2), (KEY_B, 1)]:
        for _ in range(3):  # a request that straddles a minute boundary is asked again
            t0 = time.time()
            r = requests.post(e.url() + "/v1/messages", json=body, timeout=30,
                              headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
            t1 = time.time()
            if int(t0 // 60) == int(t1 // 60):
                break
        assert r.status_code == 200, r.text
        reset = int(r.headers["x-ratelimit-reset-tokens"])
        end = (int(t0 // 60) + window_ends) * 60
        assert math.ceil(end - t1) <= reset <= math.ceil(end - t0), (key, reset, t0 % 60)
        assert int(r.headers["x-ratelimit-limit-tokens"]) == 1_000_000
        assert 0 < 1_000_000 - int(r.headers["x-ratelimit-remaining-tokens"]) < 1_000
