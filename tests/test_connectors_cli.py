"""`cellwatch plant serve` and `cellwatch ingest`: help, and one-line errors naming what is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from cellwatch.cli import cli
from plant.secrets import SecretsError


@pytest.mark.parametrize("args", [["plant", "serve"], ["ingest"]])
def test_help(args):
    res = CliRunner().invoke(cli, [*args, "--help"])
    assert res.exit_code == 0 and "--pki" in res.output and "--secrets" in res.output


def test_bad_secrets_name_the_key_and_never_the_password(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text("[twin_users.bob]\nrole = 'admin'\npassword = 'long-enough'\n")
    secrets.chmod(0o600)
    res = CliRunner().invoke(cli, ["plant", "serve", "--secrets", str(secrets), "--pki", str(tmp_path / "pki")])
    assert isinstance(res.exception, SecretsError)
    assert "twin_users.bob.role" in str(res.exception) and "long-enough" not in str(res.exception)
    secrets.chmod(0o644)
    res = CliRunner().invoke(cli, ["plant", "serve", "--secrets", str(secrets), "--pki", str(tmp_path / "pki")])
    assert "readable by others" in str(res.exception)


def test_an_unknown_endpoint_is_a_one_line_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "cellwatch.cli", "ingest", "--data", str(tmp_path / "d"),
                          "--endpoint", "nope", "--metrics-port", "0"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "no endpoint(s) ['nope']" in res.stderr


def test_the_unsecured_endpoint_exists_only_when_the_site_file_asks_for_it():
    from asyncua import ua

    from plant.sim.opcua_server import security_policies
    from plant.site import demo_site_text, parse_site

    secure = parse_site(demo_site_text()).endpoints["twin-opcua"]
    assert security_policies(secure) == [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
    text = demo_site_text().replace('security = "Basic256Sha256_SignAndEncrypt"', 'security = "None"', 1)
    assert ua.SecurityPolicyType.NoSecurity in security_policies(parse_site(text).endpoints["twin-opcua"])


def test_credentials_come_from_the_environment_or_the_secrets_file(tmp_path):
    from plant.secrets import client_credentials, env_key

    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[opcua."twin-opcua"]\nusername = "ingest"\npassword = "from-file"\n')
    secrets.chmod(0o600)
    assert client_credentials("twin-opcua", secrets, env={}).password == "from-file"
    env = {f"{env_key('twin-opcua')}_USERNAME": "ops", f"{env_key('twin-opcua')}_PASSWORD": "from-env"}
    assert env_key("twin-opcua") == "CELLWATCH_OPCUA_TWIN_OPCUA"
    got = client_credentials("twin-opcua", secrets, env=env)
    assert (got.username, got.password) == ("ops", "from-env") and "from-env" not in repr(got)
    assert client_credentials("other", secrets, env={}) is None
    secrets.write_text('[opcua."twin-opcua"]\nusername = "ingest"\n')
    with pytest.raises(SecretsError, match=r"opcua.twin-opcua.password: missing"):
        client_credentials("twin-opcua", secrets, env={})
