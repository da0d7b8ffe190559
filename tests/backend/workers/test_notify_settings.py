"""The notify worker's settings: each mistake is one line naming the variable, and no password
or key is ever echoed back."""

from __future__ import annotations

import pytest

from shopcardd_backend.settings import Settings, SettingsError

PASSWORD = "s3cret-Passw0rd"
GOOD = {
    "SHOPCARDD_SMTP_URL": f"smtp://mailer:{PASSWORD}@mail.example.com:2525",
    "SHOPCARDD_MAIL_FROM": "v@x.io",
}


def settings_of(environ: pytest.MonkeyPatch, **values: str) -> Settings:
    for name, value in values.items():
        environ.setenv(name, value)
    return Settings.from_env()


def test_an_smtp_url_is_taken_apart(environ: pytest.MonkeyPatch) -> None:
    settings = settings_of(
        environ, **GOOD, SHOPCARDD_SMS_URL="https://sms.example/v1", SHOPCARDD_SMS_API_KEY="k1"
    )
    server = settings.smtp_server
    assert server is not None
    assert (server.host, server.port, server.starttls, server.username) == (
        "mail.example.com",
        2525,
        False,
        "mailer",
    )
    assert server.password is not None and server.password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(settings) + repr(server)
    tls = settings_of(environ, SHOPCARDD_SMTP_URL="smtp+starttls://relay.example").smtp_server
    assert tls is not None and (tls.port, tls.starttls, tls.username) == (587, True, None)


def test_no_channel_settings_is_no_channels(environ: pytest.MonkeyPatch) -> None:
    settings = settings_of(environ)
    assert settings.smtp_server is None and settings.sms_url is None


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"SHOPCARDD_SMTP_URL": f"smtps://u:{PASSWORD}@h"}, "SHOPCARDD_SMTP_URL"),
        ({"SHOPCARDD_SMTP_URL": f"smtp://u:{PASSWORD}@h:70000"}, "SHOPCARDD_SMTP_URL"),
        ({"SHOPCARDD_SMTP_URL": f"smtp://u:{PASSWORD}@h/path"}, "SHOPCARDD_SMTP_URL"),
        ({"SHOPCARDD_SMTP_URL": f"smtp://u:{PASSWORD}@h"}, "SHOPCARDD_MAIL_FROM"),
        ({"SHOPCARDD_MAIL_FROM": "v@x.io"}, "SHOPCARDD_SMTP_URL"),
        ({**GOOD, "SHOPCARDD_MAIL_FROM": "not an address"}, "SHOPCARDD_MAIL_FROM"),
        ({"SHOPCARDD_SMS_URL": "ftp://sms.example", "SHOPCARDD_SMS_API_KEY": PASSWORD}, "SHOPCARDD_SMS_URL"),
        ({"SHOPCARDD_SMS_URL": "https://sms.example"}, "SHOPCARDD_SMS_API_KEY"),
        ({"SHOPCARDD_SMS_API_KEY": PASSWORD}, "SHOPCARDD_SMS_URL"),
        ({"SHOPCARDD_SMTP_ULR": "smtp://h"}, "did you mean SHOPCARDD_SMTP_URL?"),
    ],
)
def test_a_bad_channel_setting_is_named_without_its_secret(
    environ: pytest.MonkeyPatch, values: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        settings_of(environ, **values)
    assert named in str(refused.value)
    assert PASSWORD not in str(refused.value) and "\n" not in str(refused.value)


def test_production_refuses_a_placeholder_sms_key(environ: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="SHOPCARDD_SMS_API_KEY"):
        settings_of(
            environ,
            SHOPCARDD_ENVIRONMENT="production",
            SHOPCARDD_USER_SECRET="x" * 40,
            SHOPCARDD_SMS_URL="https://sms.example",
            SHOPCARDD_SMS_API_KEY="changeme",
        )
