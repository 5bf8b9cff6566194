"""network.json: defaults, validation with clear messages, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mammotriage.net.settings import (
    NetworkConfigError,
    NetworkSettings,
    PeerSettings,
    load_settings,
    save_settings,
    settings_path,
)


def test_defaults_are_secure_and_file_is_optional() -> None:
    s = load_settings()
    assert s.bind == "127.0.0.1"
    assert s.port == 11112
    assert s.ae_title == "MAMMOTRIAGE"
    assert s.pacs is None and s.send_results is False
    assert s.allowed_calling_ae_titles == () and s.allowed_hosts == ()
    assert s.require_called_ae_title is True
    assert "defaults" in s.source


def test_require_called_ae_title_is_a_setting(tmp_path: Path) -> None:
    path = tmp_path / "network.json"
    path.write_text('{"require_called_ae_title": false}')
    assert load_settings(path).require_called_ae_title is False
    path.write_text('{"require_called_ae_title": "no"}')
    with pytest.raises(NetworkConfigError, match="require_called_ae_title must be true or false"):
        load_settings(path)


def test_round_trip_through_the_data_directory() -> None:
    s = NetworkSettings(
        ae_title="MT1", port=104, bind="0.0.0.0", allowed_calling_ae_titles=("PACS", "MOD1"),
        allowed_hosts=("10.1.2.0/24", "10.1.3.4"), quiet_period_s=12,
        pacs=PeerSettings("PACS", "10.1.3.4", 104), send_results=True,
    )
    path = save_settings(s)
    assert path == settings_path() and path.parent.name.startswith("mt-home")
    again = load_settings()
    assert again == s
    assert again.source == str(path)
    assert json.loads(path.read_text())["pacs"] == {"ae_title": "PACS", "host": "10.1.3.4", "port": 104}


def test_normalisation() -> None:
    s = NetworkSettings(bind="localhost", allowed_hosts=("10.1.2.9/24", "::ffff:10.0.0.1"),
                        allowed_calling_ae_titles=(" PACS ", "PACS"))
    assert s.bind == "127.0.0.1"
    assert s.allowed_hosts == ("10.1.2.0/24", "::ffff:a00:1")
    assert s.allowed_calling_ae_titles == ("PACS",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"alowed_hosts": ["10.0.0.1"]}, "unknown key(s) 'alowed_hosts'"),
        ({"ae_title": "A" * 17}, "longer than 16"),
        ({"ae_title": "BAD\\AET"}, "contains"),
        ({"ae_title": "  "}, "empty"),
        ({"port": 70000}, "outside 0..65535"),
        ({"port": "104"}, "must be an integer"),
        ({"bind": "pacs.hospital.local"}, "host names are not accepted"),
        ({"allowed_hosts": "10.0.0.1"}, "must be a list"),
        ({"allowed_hosts": ["10.0.0.0/33"]}, "not an IP address or network"),
        ({"pacs": {"ae_title": "PACS", "host": "pacs.example", "port": 104}}, "PACS host"),
        ({"pacs": {"ae_title": "PACS", "port": 104}}, "'pacs' lacks host"),
        ({"pacs": {"ae_title": "PACS", "host": "10.0.0.1", "port": 104, "tls": True}}, "unknown key(s) in 'pacs'"),
        ({"quiet_period_s": -1}, "at least 0"),
        ({"send_results": "yes"}, "true or false"),
        ({"retry_initial_s": 60, "retry_max_s": 10}, "retry_max_s"),
    ],
)
def test_invalid_settings_name_the_problem(data: dict, message: str) -> None:
    path = settings_path()
    path.write_text(json.dumps(data))
    with pytest.raises(NetworkConfigError) as info:
        load_settings()
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "network.json"
    path.write_text("{ not json")
    with pytest.raises(NetworkConfigError, match=r"network\.json: not valid JSON"):
        load_settings(path)


def test_overrides_are_validated() -> None:
    s = NetworkSettings()
    assert s.with_overrides(port=None, ae_title=None) is s
    assert s.with_overrides(port=4242).port == 4242
    with pytest.raises(NetworkConfigError, match="bind address"):
        s.with_overrides(bind="not-an-ip")
