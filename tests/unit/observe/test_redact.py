from kcd.observe.redact import MASK, Redactor

CANARY = "sk-canary-0123456789abcdef0123"


def test_known_values_and_patterns_are_scrubbed():
    r = Redactor.from_env({"OPENAI_API_KEY": CANARY, "MOCK_API_KEY": "mock", "HOME": "/root",
                           "KYLECODE_GATEWAY_TOKEN": "gw-secret-token-value"})
    assert r.text(f"key {CANARY} here") == f"key {MASK} here"
    assert r.text("token gw-secret-token-value!") == f"token {MASK}!"
    assert r.text("mock is not a secret: /root") == "mock is not a secret: /root"
    assert r.text("Authorization: Bearer abcdefgh12345") == f"Authorization: Bearer {MASK}"
    assert r.text('{"authorization": "Basic dXNlcjpwYXNz"}') == '{"authorization": "Basic ' + MASK + '"}'
    assert r.text("use sk-proj-AbCdEfGhIjKlMnOpQrSt now") == f"use {MASK} now"
    assert r.text("sk-or-v1-0123456789abcdef0123456789") == MASK
    assert r.text("GET /v1/models?key=AIzaSyExample123&x=1") == f"GET /v1/models?key={MASK}&x=1"
    assert r.text("a task-list of tasks") == "a task-list of tasks"  # no false positive on "sk-"


def test_bytes_and_objects():
    r = Redactor([CANARY])
    assert CANARY.encode() not in r.bytes(b'{"error": "Incorrect API key provided: ' + CANARY.encode() + b'"}')
    assert r.bytes(b"plain text with nothing") == b"plain text with nothing"
    obj = r.obj({"api_key": "whatever", "headers": {"Authorization": "Bearer x"}, "msg": [CANARY, 3]})
    assert obj == {"api_key": MASK, "headers": {"Authorization": MASK}, "msg": [MASK, 3]}
    assert r.contains_secret(CANARY.encode()) and not r.contains_secret(b"clean")


def test_short_values_are_not_treated_as_secrets():
    r = Redactor(["abc", ""])
    assert r.known_values == ()
    assert r.text("abc") == "abc"


def test_encoded_forms_of_known_keys_are_redacted_wherever_raw_keys_are():
    import base64
    import urllib.parse

    from kcd.observe.redact import MASK, Redactor

    key = "sk-canary-encoded-0000000000000000"
    r = Redactor([key])
    forms = [
        base64.b64encode(key.encode()).decode(),
        base64.b64encode(b"x" + key.encode() + b"tail").decode(),
        base64.b64encode(b"xy" + key.encode()).decode(),
        base64.urlsafe_b64encode(b"Bearer " + key.encode()).decode(),
        urllib.parse.quote(key + "/+", safe="")[: -6],
        " ".join(key), ".".join(key), " - ".join(key), "_".join(key),
    ]
    for form in forms:
        text = r.text(f"echoed: {form} :end")
        assert MASK in text, form
        data = r.bytes(f"echoed: {form} :end".encode())
        assert MASK.encode() in data and not r.contains_secret(data), form
        assert r.contains_secret(form.encode()), form
    # ordinary text and other base64 are left alone
    plain = "the s k - c a n value and aGVsbG8gd29ybGQ= and sk-other-0000000000000000"
    assert r.text(plain).count(MASK) == 1  # only the sk-… pattern, which is redacted as before
