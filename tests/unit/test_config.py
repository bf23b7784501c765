from pathlib import Path

import pytest

from node.config import Destination, load_settings
from node.errors import ConfigError


def test_environment_wins_over_file_and_file_over_defaults(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text('ae_title = "FROMFILE"\ndicom_port = 4000\nstable_age_s = 3.5\n')
    settings = load_settings(config, {"CXRNODE_DICOM_PORT": "5000"})
    assert settings.ae_title == "FROMFILE"
    assert settings.dicom_port == 5000
    assert settings.stable_age_s == 3.5


def test_destinations_and_allowed_aes_parse_from_comma_lists():
    settings = load_settings(
        None,
        {
            "CXRNODE_DESTINATIONS": "PACS@10.0.0.5:104, VIEWER@viewer.local:11112",
            "CXRNODE_ALLOWED_CALLING_AES": "MODALITY1,MODALITY2",
        },
    )
    assert settings.destinations == (
        Destination("PACS", "10.0.0.5", 104),
        Destination("VIEWER", "viewer.local", 11112),
    )
    assert settings.known_calling_aes == (
        "MODALITY1",
        "MODALITY2",
        "PACS@10.0.0.5",
        "VIEWER@viewer.local",
    )


def test_config_file_named_by_environment(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text('destinations = ["PACS@127.0.0.1:104"]\n')
    settings = load_settings(None, {"CXRNODE_CONFIG": str(config)})
    assert [str(d) for d in settings.destinations] == ["PACS@127.0.0.1:104"]


def test_default_database_is_a_sqlite_file_under_the_data_dir(tmp_path: Path):
    settings = load_settings(None, {"CXRNODE_DATA_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'cxrnode.db'}"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CXRNODE_DESTINATIONS": "PACS-at-host"}, "AE@host:port"),
        ({"CXRNODE_DICOM_PORT": "eleven"}, "dicom_port"),
        ({"CXRNODE_AE_TITLE": "A" * 17}, "ae_title"),
        ({"CXRNODE_ASSUME_CHEST_WITHOUT_BODY_PART": "maybe"}, "boolean"),
        ({"CXRNODE_CSV_MAX_FILE_MB": "0"}, "csv_max_file_mb"),
        ({"CXRNODE_DICOM_MAX_ASSOCIATIONS_PER_PEER": "11"}, "dicom_max_associations_per_peer"),
        ({"CXRNODE_HL7_MAX_CONNECTIONS_PER_PEER": "0"}, "hl7_max_connections_per_peer"),
        ({"CXRNODE_HL7_FRAME_TIMEOUT_S": "0"}, "hl7_frame_timeout_s"),
        ({"CXRNODE_TLS_HANDSHAKE_TIMEOUT_S": "-1"}, "tls_handshake_timeout_s"),
        ({"CXRNODE_DICOM_PDU_TIMEOUT_S": "0"}, "dicom_pdu_timeout_s"),
        ({"CXRNODE_DICOM_MAX_PDU_BYTES": "0"}, "dicom_max_pdu_bytes"),
        ({"CXRNODE_DICOM_MAX_PDU_BYTES": str(2**32)}, "dicom_max_pdu_bytes"),
        ({"CXRNODE_DICOM_MESSAGE_TIMEOUT_S": "0"}, "dicom_message_timeout_s"),
        ({"CXRNODE_REFUSAL_AUDIT_WINDOW_S": "-5"}, "refusal_audit_window_s"),
    ],
)
def test_bad_values_are_config_errors_naming_the_setting(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(None, env)


def test_unknown_key_in_file_is_refused(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text("ae_titel = 'TYPO'\n")
    with pytest.raises(ConfigError, match="unknown setting 'ae_titel'"):
        load_settings(config, {})
