"""Authentication: admin endpoints need the bearer token, /feedback the optional feedback
token; tokens are compared in constant time and never appear in logs or metrics."""

from __future__ import annotations

import hmac
from typing import Any

import pytest

from service import handlers
from service.handlers import ArgusCore
from service.settings import Settings
from service.validation import RequestError
from tests.hardening.conftest import Hardened
from tests.hardening.support import rows

# -- unit ------------------------------------------------------------------------------


def test_tokens_are_compared_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    compare_digest = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(handlers.hmac, "compare_digest", spy)
    ArgusCore._check_token("Bearer s3cret", "s3cret", "ARGUS_ADMIN_TOKEN")
    with pytest.raises(RequestError) as err:
        ArgusCore._check_token("Bearer s3creT", "s3cret", "ARGUS_ADMIN_TOKEN")
    assert err.value.status == 403 and "s3cre" not in err.value.message
    # both comparisons went through compare_digest, on bytes (constant time for bytes)
    assert calls == [(b"s3cret", b"s3cret"), (b"s3creT", b"s3cret")]
    for header in (None, "", "s3cret", "Basic s3cret", "Bearer"):
        with pytest.raises(RequestError) as err:
            ArgusCore._check_token(header, "s3cret", "ARGUS_ADMIN_TOKEN")
        assert err.value.status == 401 and "ARGUS_ADMIN_TOKEN" in err.value.message
    assert len(calls) == 2  # nothing compared without a bearer token


def test_settings_never_show_the_tokens() -> None:
    s = Settings.from_env({"ARGUS_ADMIN_TOKEN": "adm-xyz", "ARGUS_FEEDBACK_TOKEN": "fbk-xyz"})
    assert s.admin_token == "adm-xyz" and s.feedback_token == "fbk-xyz"
    assert "xyz" not in repr(s) and "xyz" not in str(s)


# -- a real server with both tokens ----------------------------------------------------


@pytest.mark.integration
def test_tokens_guard_the_endpoints_and_never_leak(hardened: Hardened) -> None:
    server = hardened.server
    live = hardened.versions[-1].version
    wrong_admin = {"Authorization": f"Bearer {hardened.feedback_token}"}  # the other token
    wrong_feedback = {"Authorization": f"Bearer {hardened.admin_token}"}
    near_miss = {"Authorization": f"Bearer {hardened.admin_token[:-1]}"}
    with server.client() as c:
        r = c.post("/predict", json={"instances": rows(2, 50)})
        assert r.status_code == 200  # /predict needs no token
        ids = [p["id"] for p in r.json()["predictions"]]
        labelled = {"feedback": [{"id": ids[0], "label": 0}]}
        for path, body in (("/models/activate", {"version": live}), ("/models/rollback", {})):
            assert c.post(path, json=body).status_code == 401
            assert c.post(path, json=body, headers={"Authorization": "Basic x"}).status_code == 401
            for headers in (wrong_admin, near_miss):
                r = c.post(path, json=body, headers=headers)
                assert r.status_code == 403 and r.json()["reason"] == "forbidden"
        r = c.post("/models/activate", json={"version": live}, headers=hardened.admin)
        assert r.status_code == 200 and r.json()["live"] == live
        r = c.post("/models/rollback", json={}, headers=hardened.admin)
        assert r.status_code == 409  # authorized; there is just nothing to roll back to
        r = c.post("/feedback", json=labelled)
        assert r.status_code == 401 and "ARGUS_FEEDBACK_TOKEN" in r.json()["error"]
        assert c.post("/feedback", json=labelled, headers=wrong_feedback).status_code == 403
        r = c.post("/feedback", json=labelled, headers=hardened.feedback_auth)
        assert r.status_code == 200 and r.json()["accepted"] == 1
        exposed = {
            "/metrics": c.get("/metrics").text,
            "/monitoring": c.get("/monitoring").text,
            "/models": c.get("/models").text,
            "/docs.json": c.get("/docs.json").text,
        }
    exposed["server log"] = server.log_path.read_text(errors="replace")
    assert "argus_invalid_requests_total" in exposed["/metrics"]
    assert len(exposed["server log"]) > 0
    for where, text in exposed.items():
        for token in (hardened.admin_token, hardened.feedback_token):
            assert token not in text, f"a token appears in {where}"
            assert token[4:] not in text, f"a token's random part appears in {where}"
    print(f"\nauth: tokens absent from {', '.join(exposed)}")
