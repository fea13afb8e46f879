"""Location: one storage place made once, handed down, never printing its secrets."""

import pickle

import pytest

from pipeline.core.storage import Location, LocationError, open_location


def test_location_joins_on_the_same_filesystem_and_writes_whole_files(tmp_path):
    root = Location(str(tmp_path / "run"))
    marker = root.join("_shards", "shard-00000.json")
    assert marker.fs is root.fs and marker.uri == str(
        tmp_path / "run" / "_shards" / "shard-00000.json"
    )
    assert marker.read_json() is None and not marker.exists()
    marker.write_json_atomic({"images": 3})
    assert marker.read_json() == {"images": 3}
    assert [entry.name for entry in root.join("_shards").listdir()] == ["shard-00000.json"]
    root.join("_shards").remove(recursive=True)
    assert not marker.exists()


def test_location_never_shows_its_secrets_and_survives_pickling():
    secret = "SuperSecretValue123"
    place = Location("s3://user:hunter2@bucket/labels", {"key": "k", "secret": secret})
    for text in (str(place), repr(place), repr(place.join("masks"))):
        assert secret not in text and "hunter2" not in text
    assert str(place) == "s3://***@bucket/labels"
    again = pickle.loads(pickle.dumps(place))
    assert again == place and again.options["secret"] == secret and again.path == place.path


def test_an_unknown_protocol_is_a_one_line_error():
    with pytest.raises(LocationError, match="^cannot open nosuchproto://bucket/x: .*[^\n]$"):
        open_location("nosuchproto://bucket/x")
