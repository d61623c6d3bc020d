"""The VAE shapes kept for a re-warm after a restart (pure logic: files only)."""
from __future__ import annotations

from tpu_runtime.cache.part_shapes import PartShape, PartShapes, layout_key, part_shapes_file


def _shape(width: int) -> PartShape:
    return PartShape(module="WanVAE", layout=layout_key(((4, 4), "float32")), method="decode",
                     shape=(1, 16, 1, 8, width), dtype="float32")


def test_recorded_shapes_survive_a_restart_once_each(tmp_path):
    path = part_shapes_file(tmp_path, "torch_xla")
    shapes = PartShapes(path)
    for width in (8, 12, 8):
        shapes.record(_shape(width))
    again = PartShapes(path)
    assert again.recorded("WanVAE", _shape(8).layout) == [_shape(8), _shape(12)]
    assert again.recorded("WanVAE", "another layout") == [] and again.recorded("AutoencodingEngine", _shape(8).layout) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".part_shapes-")]  # no temp file left


def test_each_backend_has_its_file_and_an_unreadable_one_starts_empty(tmp_path, caplog):
    assert part_shapes_file(tmp_path, "torchax") != part_shapes_file(tmp_path, "torch_xla")
    assert part_shapes_file(None, "torch_xla") is None
    path = part_shapes_file(tmp_path, "torch_xla")
    path.write_text("{not json")
    with caplog.at_level("WARNING", logger="comfy_tpu"):
        assert PartShapes(path).recorded("WanVAE", "x") == []
    assert "unreadable" in caplog.text
    PartShapes(None).record(_shape(8))  # memory only: nothing to write


def test_earlier_only_leaves_out_what_this_session_recorded(tmp_path):
    path = part_shapes_file(tmp_path, "torch_xla")
    PartShapes(path).record(_shape(8))
    shapes = PartShapes(path)
    shapes.record(_shape(12))
    layout = _shape(8).layout
    assert shapes.recorded("WanVAE", layout) == [_shape(8), _shape(12)]
    assert shapes.recorded("WanVAE", layout, earlier_only=True) == [_shape(8)]


def test_a_file_of_an_older_pack_without_call_forms_still_loads(tmp_path):
    path = part_shapes_file(tmp_path, "torch_xla")
    path.write_text('{"format": "comfy-tpu-part-shapes", "version": 1, "entries": [{"module": "WanVAE", '
                    '"layout": "x", "method": "decode", "shape": [1, 16, 1, 8, 8], "dtype": "float32"}]}')
    assert [entry.call for entry in PartShapes(path).recorded("WanVAE", "x")] == [""]
