"""content: what a file in a layer is made of (ranges of source files and
literal bytes), merged as few reads as possible."""

from __future__ import annotations

from pathlib import Path

from modelimage.content import FileRange, Literal, VirtualFile, coalesce, is_remote, stamped


def test_coalesce_merges_neighbours_and_drops_empty_pieces():
    a, b = Path("/a"), Path("/b")
    segs = [FileRange(a, 0, 10), FileRange(a, 10, 5), Literal(b""), Literal(b"x"), Literal(b"y"),
            FileRange(a, 20, 1), FileRange(b, 21, 1), FileRange(b, 22, 0)]
    assert coalesce(segs) == (FileRange(a, 0, 15), Literal(b"xy"), FileRange(a, 20, 1), FileRange(b, 21, 1))


def test_whole_file_and_sizes():
    vf = VirtualFile.whole("m/model.gguf", Path("/w"), 123)
    assert vf.size == 123 and vf.segments == (FileRange(Path("/w"), 0, 123),) and vf.origin == "m/model.gguf"
    assert VirtualFile.whole("empty", Path("/e"), 0).segments == ()
    assert VirtualFile("x", (Literal(b"ab"), FileRange(Path("/w"), 5, 7))).size == 9


def test_stamped_pins_each_range_to_its_inspected_version():
    vf = VirtualFile("x", (FileRange(Path("/w"), 0, 4), Literal(b"h"), FileRange(Path("/v"), 0, 1)))
    out = stamped(vf, {Path("/w"): (4, 99)})
    assert out.segments[0].stamp == (4, 99) and out.segments[2].stamp is None and out.segments[1] == Literal(b"h")


def test_local_paths_are_not_remote():
    assert not is_remote(Path("/x")) and not is_remote("/x")


def test_a_ranged_object_gets_name_open_and_read_bytes_from_one_ranged_read():
    """RangedObject: what S3Object and sources.image.ImageFile share, over
    their one ``get``; a range outside the object is one clear error."""
    from dataclasses import dataclass

    import pytest

    from modelimage.content import RangedObject
    from modelimage.errors import SourceError

    data = bytes(range(256)) * 1000

    @dataclass(frozen=True)
    class Ranged(RangedObject):
        size: int
        asked: list

        def __str__(self) -> str:
            return "mem://bucket/models/m/model.gguf"

        def get(self, offset: int, length: int) -> bytes:
            self.check_range(offset, length)
            self.asked.append((offset, length))
            return data[offset:offset + length]

        def read(self, offset, length):
            yield self.get(offset, length)

    obj = Ranged(len(data), [])
    assert obj.name == "model.gguf" and is_remote(obj)
    with obj.open() as f:
        f.seek(1000)
        assert f.read(4) == data[1000:1004]
    assert obj.asked == [(1000, RangedObject.READAHEAD)]  # one read, ahead
    assert obj.read_bytes() == data
    with pytest.raises(SourceError, match=r"^mem://bucket/models/m/model.gguf: range 255990\+20 is outside its "
                                          r"256000 bytes$"):
        obj.get(len(data) - 10, 20)
