"""Who a consumer is (SPEC "Trust boundaries (v2)": a consumer header is trusted only from a
trusted source). The shipped JWT configs (envoy/envoy-jwt.yaml and the Istio EnvoyFilter) put
Envoy's jwt_authn before tollgate; tollgate's `consumer_claim` takes the consumer from the
payload jwt_authn verified. Each test makes its own signing key and JWKS, signs real RS256
tokens with it and drives the official SDKs at a real Envoy: a client that invents a name,
forges a token or sends a consumer header gets no pooled key and no limits of its own."""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid

import anthropic
import openai
import pytest
import requests
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import envoyctl
from conftest import ACCOUNT_KEYS, EnvoyFactory

JWT_FILTER = "envoy.filters.http.jwt_authn"
SHIPPED = "envoy-jwt.yaml"
ISTIO = envoyctl.ROOT / "envoy" / "istio" / "tollgate-envoyfilter.yaml"
ANTHROPIC_ACCOUNT = ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"]
OPENAI_ACCOUNT = ACCOUNT_KEYS["TOLLGATE_OPENAI_KEY_1"]
GEMINI_ACCOUNT = ACCOUNT_KEYS["TOLLGATE_GEMINI_KEY_1"]
ADMIN_KEY = "tg-demo-admin"  # the shipped config's demo admin key (its comment names it)
HI = [{"role": "user", "content": "hi"}]


# ---- an identity provider: a key pair, its JWKS and tokens signed with it ------------------



def counted(prom: str, label: str) -> list[str]:
    """The Prometheus series carrying `label` with a value other than 0 (every series exists
    at 0 from the moment the configuration loads)."""
    return [line for line in prom.splitlines()
            if label in line and not line.startswith("#") and float(line.rsplit(" ", 1)[1]) != 0]

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: dict) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


class Idp:
    """An RSA signing key and the issuer and audience a provider expects. A second Idp with
    the same kid, issuer and audience is a forger: its tokens look right and verify against
    nothing the proxy trusts."""

    def __init__(self, provider: dict, kid: str = "tollgate-test"):
        self.issuer = provider["issuer"]
        self.audience = provider["audiences"][0]
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        nums = self.key.public_key().public_numbers()

        def be(i: int) -> str:
            return b64url(i.to_bytes((i.bit_length() + 7) // 8, "big"))

        return json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                                     "n": be(nums.n), "e": be(nums.e)}]})

    def claims(self, sub: str, **extra) -> dict:
        now = int(time.time())
        return {"iss": self.issuer, "aud": self.audience, "sub": sub, "iat": now,
                "exp": now + 600, **extra}

    def sign(self, header: dict, claims: dict) -> str:
        signing_input = f"{b64json(header)}.{b64json(claims)}"
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(sig)}"

    def token(self, sub: str, **extra) -> str:
        return self.sign({"alg": "RS256", "typ": "JWT", "kid": self.kid}, self.claims(sub, **extra))


# ---- configs ---------------------------------------------------------------------------------


def jwt_filters(cfg: dict):
    """The jwt_authn filter configs of an Envoy bootstrap, in order."""
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f.get("typed_config", {}).get("http_filters", []):
                    if hf["name"] == JWT_FILTER:
                        yield hf["typed_config"]


def only_provider(jwt_config: dict) -> dict:
    (provider,) = jwt_config["providers"].values()
    return provider


def with_jwks(jwks: str):
    """A `make_envoy` patch: every jwt_authn provider trusts `jwks` instead of the placeholder."""
    def patch(cfg: dict) -> None:
        found = list(jwt_filters(cfg))
        assert found, "no jwt_authn filter in the config"
        for jc in found:
            for provider in jc["providers"].values():
                provider["local_jwks"]["inline_string"] = jwks
    return patch


def shipped_provider() -> dict:
    return only_provider(next(jwt_filters(envoyctl.load(SHIPPED))))


def shipped_tollgate(**overrides) -> dict:
    """envoy-jwt.yaml's own tollgate configuration, with `overrides` on top."""
    cfg = envoyctl.tollgate_config(next(envoyctl.wasm_filters(envoyctl.load(SHIPPED))))
    assert cfg["consumer_claim"] == {"metadata": "jwt_payload", "claim": "sub"}
    assert "consumer_header" not in cfg
    cfg.update(overrides)
    return cfg


def consumers(search_team_limits: list[dict]) -> list[dict]:
    """Two key-less consumers: search-team (the one tokens name) and team-b (a name a client
    might claim in a header), whose limits are generous."""
    return [{"name": "search-team", "limits": search_team_limits},
            {"name": "team-b", "limits": [{"requests": 1000, "per": "minute"}]}]


@pytest.fixture(scope="module")
def idp():
    return Idp(shipped_provider())


@pytest.fixture(scope="module")
def forger():
    return Idp(shipped_provider())


@pytest.fixture(scope="module")
def jwt_envoy(mock, workdir, idp):
    """envoy-jwt.yaml as shipped, its JWKS replaced by the test IdP's, with search-team and
    team-b as consumers and a default limit of 2 requests a minute (what an invented name
    would have got fresh before)."""
    f = EnvoyFactory(mock, workdir)
    yield f(shipped_tollgate(consumers=consumers([{"requests": 1000, "per": "minute"}]),
                             limits=[{"requests": 2, "per": "minute"}]),
            shipped=SHIPPED, patch=with_jwks(idp.jwks()))
    f.close()


# ---- clients ---------------------------------------------------------------------------------


def claude(e, token: str | None, **headers) -> anthropic.Anthropic:
    """The Anthropic SDK; its API key (the token) goes in x-api-key. No token: no key header."""
    if token is None:
        headers.update({"x-api-key": anthropic.omit, "authorization": anthropic.omit})
    return anthropic.Anthropic(base_url=e.url(), api_key=token or "unused", max_retries=0,
                               default_headers=headers)


NO_TOKEN = "no-token: the SDK omits Authorization"


def gpt(e, token: str | None, **headers) -> openai.OpenAI:
    """The OpenAI SDK; its API key (the token) goes in Authorization: Bearer. No token: the
    SDK needs a key, so it gets a placeholder and `ask_gpt` omits the header."""
    return openai.OpenAI(base_url=e.url() + "/v1", api_key=token or NO_TOKEN, max_retries=0,
                         default_headers=headers)


def ask_claude(client: anthropic.Anthropic):
    return client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=HI)


def ask_gpt(client: openai.OpenAI):
    omit = {"Authorization": openai.omit} if client.api_key == NO_TOKEN else {}
    return client.chat.completions.create(model="gpt-4o-mini", max_tokens=16, messages=HI,
                                          extra_headers=omit)


def status_of(call) -> int:
    try:
        call()
        return 200
    except (anthropic.APIStatusError, openai.APIStatusError) as err:
        return err.status_code


def invented(n: int) -> list[str]:
    return [f"made-up-{uuid.uuid4().hex[:12]}" for _ in range(n)]


def upstream_values(mock) -> str:
    """Every header value the mock saw, joined (to look for a token that must not be there)."""
    return "\n".join(v for r in mock.requests() for v in r["headers"].values())


def rejections(e, reason: str) -> int:
    return sum(v for k, v in e.stats().items()
               if k.startswith("wasmcustom.tollgate_rejections_total") and f".reason.{reason}" in k)


# ---- (a) a valid token ------------------------------------------------------------------------


def test_a_valid_token_runs_as_its_consumer_on_the_pooled_key(jwt_envoy, mock, idp):
    token = idp.token("search-team")
    mock.reset()
    # The client also claims another consumer in a header: it changes nothing.
    msg = ask_claude(claude(jwt_envoy, token, **{"x-tollgate-consumer": "team-b"}))
    assert msg.content[0].text
    assert mock.last("/v1/messages")["key"] == ANTHROPIC_ACCOUNT
    chat = ask_gpt(gpt(jwt_envoy, token))
    assert chat.choices[0].message.content
    assert mock.last("/v1/chat/completions")["key"] == OPENAI_ACCOUNT
    r = requests.post(jwt_envoy.url() + "/v1beta/models/gemini-2.0-flash:generateContent",
                      headers={"x-goog-api-key": token},
                      json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, timeout=10)
    assert r.status_code == 200, r.text
    assert mock.last("/v1beta/")["key"] == GEMINI_ACCOUNT
    assert len(mock.requests()) == 3
    # jwt_authn's `forward: false`: the token never goes upstream, in any header.
    assert token not in upstream_values(mock)
    assert token.split(".")[2] not in upstream_values(mock)
    prom = jwt_envoy.prometheus()
    assert 'tollgate_requests_total{consumer="search-team"' in prom
    assert counted(prom, 'consumer="team-b"') == []


def test_envoy_jwt_yaml_as_shipped_knows_its_consumer_by_token_only(make_envoy, mock, idp):
    """The shipped file unchanged but for the JWKS: its consumer team-a by token, never by
    header."""
    e = make_envoy(shipped_tollgate(), shipped=SHIPPED, patch=with_jwks(idp.jwks()))
    mock.reset()
    assert ask_claude(claude(e, idp.token("team-a"))).content[0].text
    assert mock.last("/v1/messages")["key"] == ANTHROPIC_ACCOUNT
    assert status_of(lambda: ask_claude(claude(e, None, **{"x-tollgate-consumer": "team-a"}))) == 401
    assert status_of(lambda: ask_claude(claude(e, idp.token("team-b")))) == 403
    assert len(mock.requests()) == 1


# ---- (b) no token, a consumer header ----------------------------------------------------------


def test_no_token_and_a_consumer_header_gets_401_in_the_apis_format(jwt_envoy, mock):
    mock.reset()
    with pytest.raises(anthropic.AuthenticationError) as a:
        ask_claude(claude(jwt_envoy, None, **{"x-tollgate-consumer": "search-team"}))
    assert a.value.status_code == 401
    # tollgate's answer, in Anthropic's format: jwt_authn let the tokenless request through.
    assert a.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError) as o:
        ask_gpt(gpt(jwt_envoy, None, **{"x-tollgate-consumer": "search-team"}))
    assert o.value.status_code == 401
    assert o.value.body["type"] == "invalid_request_error"
    assert mock.requests() == []


# ---- (c) tokens that are not valid -------------------------------------------------------------


def not_valid_tokens(idp: Idp, forger: Idp) -> dict[str, tuple[str, int]]:
    """Tokens naming search-team that must not verify, and jwt_authn's status for each (it
    answers 403 for an audience it does not accept, 401 otherwise)."""
    good = idp.token("search-team")
    head, _, sig = good.split(".")
    return {
        "signed by another key, same kid": (forger.token("search-team"), 401),
        "alg none": (f"{b64json({'alg': 'none', 'typ': 'JWT', 'kid': idp.kid})}."
                     f"{b64json(idp.claims('search-team'))}.", 401),
        "payload swapped under a valid signature":
            (f"{head}.{b64json(idp.claims('team-b'))}.{sig}", 401),
        "expired": (idp.token("search-team", exp=int(time.time()) - 120), 401),
        "another issuer": (idp.token("search-team", iss="https://evil.example.com"), 401),
        "another audience": (idp.token("search-team", aud="some-other-app"), 403),
        "not a JWT": ("search-team", 401),
    }


def test_a_token_that_is_not_valid_is_refused_by_jwt_authn(jwt_envoy, mock, idp, forger):
    mock.reset()
    hdr = {"x-tollgate-consumer": "search-team"}
    for name, (token, status) in not_valid_tokens(idp, forger).items():
        with pytest.raises(anthropic.APIStatusError) as a:
            ask_claude(claude(jwt_envoy, token, **hdr))
        assert a.value.status_code == status, name
        # jwt_authn refused it, before tollgate: its plain-text answer, not tollgate's JSON.
        text = a.value.response.text
        assert "Jwt" in text and not text.startswith("{"), (name, text)
        assert status_of(lambda: ask_gpt(gpt(jwt_envoy, token, **hdr))) == status, name
    assert mock.requests() == []


def test_a_forged_token_beside_a_valid_one_names_nobody(jwt_envoy, mock, idp, forger):
    """A valid token for team-b in one header and a forged one for search-team in another:
    the request never runs as search-team."""
    mock.reset()
    before = jwt_envoy.prometheus().count('consumer="search-team"')
    r = requests.post(jwt_envoy.url() + "/v1/messages",
                      headers={"authorization": "Bearer " + idp.token("team-b"),
                               "x-api-key": forger.token("search-team"),
                               "anthropic-version": "2023-06-01"},
                      json={"model": "claude-haiku-4-5", "max_tokens": 16, "messages": HI},
                      timeout=10)
    assert r.status_code == 401, r.text
    assert mock.requests() == []
    assert jwt_envoy.prometheus().count('consumer="search-team"') == before


# ---- (d) invented names -----------------------------------------------------------------------


def test_twenty_invented_subs_are_refused_and_get_no_limits_of_their_own(jwt_envoy, mock, idp):
    names = invented(20)
    before = rejections(jwt_envoy, "unknown_consumer")
    mock.reset()
    for i, name in enumerate(names):
        client = claude(jwt_envoy, idp.token(name)) if i % 2 else gpt(jwt_envoy, idp.token(name))
        with pytest.raises((anthropic.PermissionDeniedError, openai.PermissionDeniedError)) as err:
            ask_claude(client) if i % 2 else ask_gpt(client)
        assert err.value.status_code == 403, name
        body = err.value.body
        if i % 2:
            assert body["error"]["type"] == "permission_error"
        else:
            assert body["type"] == "invalid_request_error"
        assert name not in json.dumps(body)
    assert mock.requests() == []
    assert rejections(jwt_envoy, "unknown_consumer") - before == 20
    prom = jwt_envoy.prometheus()
    assert not [n for n in names if n in prom], "an invented name became a metrics label"


def test_with_anonymous_invented_subs_share_anonymous_limits(make_envoy, mock, idp):
    e = make_envoy(shipped_tollgate(consumers=consumers([{"requests": 1000, "per": "minute"}]),
                                    anonymous={"limits": [{"requests": 2, "per": "minute"}]}),
                   shipped=SHIPPED, patch=with_jwks(idp.jwks()))
    mock.reset()
    codes = [status_of(lambda n=n: ask_gpt(gpt(e, idp.token(n)))) for n in invented(20)]
    assert codes == [200] * 2 + [429] * 18
    assert len(mock.requests()) == 2
    assert 'tollgate_requests_total{consumer="anonymous"' in e.prometheus()


def claim_envoy(make_envoy, idp):
    """envoy-jwt.yaml with the consumer in a custom claim, `team`, which (unlike `sub`)
    jwt_authn passes on whatever its JSON type."""
    return make_envoy(shipped_tollgate(consumer_claim={"metadata": "jwt_payload", "claim": "team"},
                                       consumers=consumers([{"requests": 1000, "per": "minute"}])),
                      shipped=SHIPPED, patch=with_jwks(idp.jwks()))


def admitted_claims(e, mock, idp, values: list) -> dict[str, int]:
    """Status per `team` claim value (signed, valid tokens); asserts that only `search-team`
    itself reached upstream."""
    mock.reset()
    codes = {json.dumps(v): status_of(lambda v=v: ask_gpt(gpt(e, idp.token("someone", team=v))))
             for v in ["search-team", *values]}
    assert codes.pop('"search-team"') == 200
    assert len(mock.requests()) == 1, codes
    return codes


def test_a_claim_that_is_not_a_consumers_name_names_nobody(make_envoy, mock, idp):
    """Other case, a NUL, a list or object holding the name, other JSON types: never
    search-team, never fresh limits (401 where the value is not text at all)."""
    e = claim_envoy(make_envoy, idp)
    codes = admitted_claims(e, mock, idp, ["Search-Team", "search-team\u0000", ["search-team"],
                                           {"name": "search-team"}, 1, True, ""])
    assert all(c in (401, 403) for c in codes.values()), codes


def test_a_claim_with_whitespace_around_a_consumers_name_names_nobody(make_envoy, mock, idp):
    """The claim is the IdP's word, compared as it is: an IdP that lets users pick a display
    name must not let " search-team" become search-team."""
    e = claim_envoy(make_envoy, idp)
    codes = admitted_claims(e, mock, idp, [" search-team", "search-team ", "search-team\n",
                                           "\tsearch-team"])
    assert all(c == 403 for c in codes.values()), codes


# ---- (e) a consumer's limit binds, whatever header the client sends ---------------------------


def test_a_consumers_limit_binds_whatever_consumer_header_the_client_sends(make_envoy, mock, idp):
    e = make_envoy(shipped_tollgate(consumers=consumers([{"requests": 2, "per": "minute"}])),
                   shipped=SHIPPED, patch=with_jwks(idp.jwks()))
    token = idp.token("search-team")
    mock.reset()
    claimed = ["team-b", "anonymous", *invented(2), "search-team"]
    codes = [status_of(lambda h=h: ask_claude(claude(e, token, **{"x-tollgate-consumer": h})))
             for h in claimed]
    assert codes == [200, 200, 429, 429, 429]
    assert len(mock.requests()) == 2
    assert {r["key"] for r in mock.requests()} == {ANTHROPIC_ACCOUNT}


# ---- the admin path ---------------------------------------------------------------------------


def test_the_admin_path_takes_admin_keys_and_no_path_reaches_upstream_past_jwt(jwt_envoy, mock):
    r = requests.get(jwt_envoy.url() + "/tollgate/usage",
                     headers={"authorization": "Bearer " + ADMIN_KEY}, timeout=10)
    assert r.status_code == 200, r.text
    r = requests.get(jwt_envoy.url() + "/tollgate/usage",
                     headers={"x-tollgate-consumer": "search-team"}, timeout=10)
    assert r.status_code == 401
    assert requests.get(jwt_envoy.url() + "/tollgate/health", timeout=10).status_code == 200
    mock.reset()
    # Paths that start like the admin path, which jwt_authn skips, but lead elsewhere.
    for path in ["/tollgate/../v1/messages", "/tollgate/%2e%2e/v1/messages",
                 "/tollgate//../v1/messages", "/tollgate/..%2fv1/messages"]:
        r = requests.post(jwt_envoy.url() + path,
                          headers={"x-tollgate-consumer": "search-team", "x-api-key": ADMIN_KEY,
                                   "anthropic-version": "2023-06-01"},
                          json={"model": "claude-haiku-4-5", "max_tokens": 16, "messages": HI},
                          timeout=10)
        assert r.status_code in (400, 401, 404), (path, r.status_code, r.text)
    assert mock.requests() == []


# ---- consumer_header: only with the client's copy removed ------------------------------------

SUB = "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:jwt_payload:sub)%"


def header_from_metadata(remove_clients_copy: bool) -> dict:
    """A header_mutation filter (after jwt_authn) that writes the verified `sub` into
    x-tollgate-consumer, having first removed the client's copy (unless told not to). With
    no token there is no `sub`, and it writes nothing."""
    mutations = [{"remove": "x-tollgate-consumer"}] if remove_clients_copy else []
    mutations.append({"append": {"header": {"key": "x-tollgate-consumer", "value": SUB},
                                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}})
    return {"name": "envoy.filters.http.header_mutation", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
        "mutations": {"request_mutations": mutations}}}


def consumer_header_way(jwks: str, setter: str):
    """envoy-jwt.yaml rearranged the consumer_header way: a filter after jwt_authn sets
    x-tollgate-consumer from the verified token, and tollgate trusts that header. `setter`:
    "claim_to_headers" (jwt_authn itself), "mutation" (header_mutation, removing the client's
    copy first) or "mutation-keeping-the-clients-copy" (the mistake)."""
    def patch(cfg: dict) -> None:
        with_jwks(jwks)(cfg)
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        names = [f["name"] for f in hcm["http_filters"]]
        after_jwt = names.index(JWT_FILTER) + 1
        if setter == "claim_to_headers":
            provider = only_provider(next(jwt_filters(cfg)))
            provider["claim_to_headers"] = [{"header_name": "x-tollgate-consumer", "claim_name": "sub"}]
        else:
            remove = setter == "mutation"
            hcm["http_filters"].insert(after_jwt, header_from_metadata(remove))
    return patch


def header_tollgate(search_team_limits: list[dict]) -> dict:
    cfg = shipped_tollgate(consumers=consumers(search_team_limits),
                           limits=[{"requests": 2, "per": "minute"}])
    del cfg["consumer_claim"]
    cfg["consumer_header"] = "x-tollgate-consumer"
    return cfg


def test_consumer_header_set_without_removing_the_clients_copy_trusts_the_client(make_envoy, mock, idp):
    """The mistake the shipped configs must not make (the control for the next test): a
    filter that only sets the header leaves a tokenless client's own copy in place."""
    e = make_envoy(header_tollgate([{"requests": 1000, "per": "minute"}]), shipped=SHIPPED,
                   patch=consumer_header_way(idp.jwks(), "mutation-keeping-the-clients-copy"))
    mock.reset()
    ask_claude(claude(e, None, **{"x-tollgate-consumer": "search-team"}))
    assert mock.last("/v1/messages")["key"] == ANTHROPIC_ACCOUNT
    assert 'tollgate_requests_total{consumer="search-team"' in e.prometheus()


@pytest.mark.parametrize("setter", ["mutation", "claim_to_headers"])
def test_consumer_header_set_from_a_token_ignores_the_clients_copy(make_envoy, mock, idp, setter):
    e = make_envoy(header_tollgate([{"requests": 2, "per": "minute"}]), shipped=SHIPPED,
                   patch=consumer_header_way(idp.jwks(), setter))
    mock.reset()
    # No token: the client's header is gone before tollgate looks; 401 in the API's format.
    for name in ["search-team", "team-b", *invented(3)]:
        with pytest.raises(anthropic.AuthenticationError) as err:
            ask_claude(claude(e, None, **{"x-tollgate-consumer": name}))
        assert err.value.body["error"]["type"] == "authentication_error"
    assert mock.requests() == []
    # Invented subs reach tollgate as a trusted header naming nobody: 403, never fresh limits
    # (the default limit would admit 2 of them).
    names = invented(10)
    assert [status_of(lambda n=n: ask_gpt(gpt(e, idp.token(n)))) for n in names] == [403] * 10
    assert mock.requests() == []
    assert rejections(e, "unknown_consumer") == 10
    # A valid token: its sub, not the client's header, picks the consumer and its limit.
    token = idp.token("search-team")
    codes = [status_of(lambda: ask_claude(claude(e, token, **{"x-tollgate-consumer": "team-b"})))
             for _ in range(5)]
    assert codes == [200, 200, 429, 429, 429]
    assert len(mock.requests()) == 2
    prom = e.prometheus()
    assert counted(prom, 'consumer="team-b"') == []
    assert not [n for n in names if n in prom]


# ---- (f) the Istio example --------------------------------------------------------------------


def istio_as_plain_envoy(jwks: str):
    """A `make_envoy` patch that renders the Istio EnvoyFilter's patches into a plain Envoy
    config: the HTTP_FILTER patches (jwt_authn, then tollgate), each inserted before the
    router in the order Istio applies them, replace the demo's wasm filter; the LISTENER and
    BOOTSTRAP patches are merged. `jwks` replaces the placeholder JWKS."""
    with open(ISTIO) as f:
        ef = yaml.safe_load(f)

    def patch(cfg: dict) -> None:
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != envoyctl.WASM_FILTER]
        for p in ef["spec"]["configPatches"]:
            value = copy.deepcopy(p["patch"]["value"])
            if p["applyTo"] == "HTTP_FILTER":
                assert p["patch"]["operation"] == "INSERT_BEFORE"
                assert p["match"]["context"] == "SIDECAR_INBOUND"
                sub = p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
                at = next(i for i, f in enumerate(hcm["http_filters"]) if f["name"] == sub)
                if value["name"] == envoyctl.WASM_FILTER:
                    value["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(envoyctl.WASM)
                hcm["http_filters"].insert(at, value)
            elif p["applyTo"] == "NETWORK_FILTER":
                assert p["patch"]["operation"] == "MERGE"
                assert value["name"] == "envoy.filters.network.http_connection_manager"
                merged = {k: v for k, v in value["typed_config"].items() if k != "@type"}
                hcm.update(merged)
            elif p["applyTo"] == "HTTP_ROUTE":
                assert p["patch"]["operation"] == "MERGE"
                for vh in hcm["route_config"]["virtual_hosts"]:
                    for route in vh["routes"]:
                        route.update(value)
            elif p["applyTo"] == "LISTENER":
                assert p["patch"]["operation"] == "MERGE"
                cfg["static_resources"]["listeners"][0].update(value)
            elif p["applyTo"] == "BOOTSTRAP":
                assert p["patch"]["operation"] == "MERGE"
                cfg.update(value)
            else:
                raise AssertionError(f"unrendered patch {p['applyTo']}")
        names = [f["name"] for f in hcm["http_filters"]]
        assert names[-3:] == [JWT_FILTER, envoyctl.WASM_FILTER, "envoy.filters.http.router"], names
        with_jwks(jwks)(cfg)
    return patch


def istio_provider() -> dict:
    with open(ISTIO) as f:
        ef = yaml.safe_load(f)
    (jwt,) = [p["patch"]["value"]["typed_config"] for p in ef["spec"]["configPatches"]
              if p["applyTo"] == "HTTP_FILTER" and p["patch"]["value"]["name"] == JWT_FILTER]
    return only_provider(jwt)


def test_the_istio_example_admits_a_token_and_refuses_a_consumer_header(make_envoy, mock):
    provider = istio_provider()
    assert provider["forward"] is False
    assert provider["payload_in_metadata"] == "jwt_payload"
    idp = Idp(provider)
    e = make_envoy(patch=istio_as_plain_envoy(idp.jwks()))
    mock.reset()
    # (a) a valid token whose sub is the example's consumer: 200 on the pooled key.
    msg = ask_claude(claude(e, idp.token("search-team")))
    assert msg.content[0].text
    assert mock.last("/v1/messages")["key"] == ANTHROPIC_ACCOUNT
    chat = ask_gpt(gpt(e, idp.token("search-team")))
    assert chat.choices[0].message.content
    assert mock.last("/v1/chat/completions")["key"] == OPENAI_ACCOUNT
    # The bootstrap patch's stats_tags make Prometheus labels of tollgate's stats.
    assert 'tollgate_requests_total{consumer="search-team"' in e.prometheus()
    mock.reset()
    # (b) what the review did: no key, the header naming the consumer. Now 401.
    with pytest.raises(anthropic.AuthenticationError) as err:
        ask_claude(claude(e, None, **{"x-tollgate-consumer": "search-team"}))
    assert err.value.status_code == 401
    # A forged token and invented names fare no better.
    assert status_of(lambda: ask_claude(claude(e, Idp(provider).token("search-team")))) == 401
    assert [status_of(lambda n=n: ask_gpt(gpt(e, idp.token(n)))) for n in invented(5)] == [403] * 5
    assert mock.requests() == []
