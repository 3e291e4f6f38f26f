"""detserve.client.contract: the names and rules export, serving, the client and evaluation share."""

from __future__ import annotations

import pytest

from detserve.client import contract


def test_every_folder_uses_the_contract_s_own_objects():
    """Re-exported, never restated: a change in the contract reaches every side."""
    import inspect

    from detserve.client import Detector
    from detserve.export import signatures, warmup
    from detserve.serving.options import ServerOptions
    from detserve.serving.predict import Limits

    for name in ("DEFAULT_SIGNATURE", "BYTES_SIGNATURE", "INFO_SIGNATURE", "PREDICT_METHOD", "IMAGES_INPUT",
                 "ENCODED_INPUT", "NUMERIC_OUTPUTS", "DETECTION_OUTPUTS", "CLASS_NAMES_OUTPUT", "INFO_OUTPUTS"):
        assert getattr(signatures, name) is getattr(contract, name), name
    assert warmup.WARMUP_FILENAME is contract.WARMUP_FILENAME
    # The default limits: the client's and the server's flags are the contract's.
    client_default = inspect.signature(Detector).parameters["max_message_bytes"].default
    assert client_default == ServerOptions.max_message_bytes == contract.MAX_MESSAGE_BYTES
    assert Limits().max_image_pixels == ServerOptions.max_image_pixels == contract.MAX_IMAGE_PIXELS
    assert contract.DETECTION_OUTPUTS[:4] == contract.NUMERIC_OUTPUTS


def test_version_directories_follow_tf_serving(tmp_path):
    for name in ("0", "1", "007", "7", "07", "12", "abc", "-3", " 4", "\u0663", ".tmp-export-1-ab",
                 str(2**63), str(2**63 - 1)):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a version")
    versions = contract.version_dirs(tmp_path)
    # 0 is a version; "7" wins over "007" and "07" (TF Serving keeps the greatest name); no non-ASCII digits,
    # signs, spaces or numbers beyond int64.
    assert sorted(versions) == [0, 1, 7, 12, 2**63 - 1]
    assert versions[7].name == "7"
    assert contract.parse_version("0042") == 42 and contract.parse_version("4a") is None


def test_version_without_its_canonical_spelling_keeps_the_greatest_name(tmp_path):
    for name in ("007", "07"):
        (tmp_path / name).mkdir()
    assert contract.version_dirs(tmp_path)[7].name == "07"


def test_files_of_a_version(tmp_path):
    assert contract.warmup_path(tmp_path) == tmp_path / "assets.extra" / "tf_serving_warmup_requests"
    assert contract.label_map_file(tmp_path) == tmp_path / "assets" / "label_map.pbtxt"


@pytest.mark.parametrize(("name", "internal"), [("__saved_model_init_op", True), ("serving_default", False)])
def test_internal_signatures(name, internal):
    assert contract.is_internal_signature(name) is internal
