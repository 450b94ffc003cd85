"""The reading room's Qt-free core: natural sort, the chest "compare with prior" protocol, linked
viewport ranges, display flips and rotations, and the DICOM tag tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr_viewer.io.hanging import compare_with_prior, linked_range, natural_key, patient_studies, prior_study
from cxr_viewer.io.index import build_tree
from cxr_viewer.io.study import ImageMeta, ImageRef, PatientNode, SeriesNode, StudyIndex, StudyNode
from cxr_viewer.io.tags import filter_rows, read_rows
from cxr_viewer.io.viewport import FLIP_H, FLIP_V, ROTATE_LEFT, ROTATE_RIGHT, DisplayOrientation, orientation_markers


def test_natural_sort_puts_person99_before_person998():
    names = ["person998_bacteria_2927.jpeg", "person99_virus_183.jpeg", "person1000_bacteria_2931.jpeg",
             "IM-0010.jpeg", "IM-0009.jpeg", "img10.png", "img2.png"]
    assert sorted(names) != sorted(names, key=natural_key)  # plain sorting gets these wrong
    assert sorted(names, key=natural_key) == [
        "IM-0009.jpeg", "IM-0010.jpeg", "img2.png", "img10.png",
        "person99_virus_183.jpeg", "person998_bacteria_2927.jpeg", "person1000_bacteria_2931.jpeg"]


def _ref(path: str, pid: str, date: str, view: str = "PA") -> ImageRef:
    return ImageRef(path, "dicom", ImageMeta(patient_id=pid, study_date=date, view_position=view))


def _study(uid: str, date: str, *refs: ImageRef) -> StudyNode:
    return StudyNode(uid, date, "CHEST", (SeriesNode(uid + ".1", "", "CR", tuple(refs)),))


def _index() -> tuple[StudyIndex, dict[str, ImageRef]]:
    refs = {
        "now_lat": _ref("now_lat.dcm", "P1", "20240301", "LL"),
        "now_pa": _ref("now_pa.dcm", "P1", "20240301", "PA"),
        "last_year": _ref("2023.dcm", "P1", "20230105", "AP"),
        "old": _ref("2019.dcm", "P1", "20190101", "PA"),
        "future": _ref("2025.dcm", "P1", "20250101", "PA"),
        "other": _ref("other.dcm", "P2", "20231231", "PA"),
        "undated": _ref("undated.dcm", "P3", "", "PA"),
    }
    index = StudyIndex((
        # the same PatientID under two names (a corrected name): still the same patient
        PatientNode("P1|DOE^J", "DOE^J", "P1", (_study("s2019", "20190101", refs["old"]),
                                                _study("s2024", "20240301", refs["now_lat"], refs["now_pa"]),
                                                _study("s2025", "20250101", refs["future"]))),
        PatientNode("P1|DOE^JOHN", "DOE^JOHN", "P1", (_study("s2023", "20230105", refs["last_year"]),)),
        PatientNode("P2|X", "X", "P2", (_study("sP2", "20231231", refs["other"]),)),
        PatientNode("P3|Y", "Y", "P3", (_study("sP3", "", refs["undated"]),)),
    ))
    return index, refs


def test_compare_with_prior_picks_the_most_recent_earlier_study_of_the_same_patient():
    index, refs = _index()
    assert [s.uid for s in patient_studies(index, "P1")] == ["s2019", "s2023", "s2024", "s2025"]
    assert prior_study(index, refs["now_pa"]).uid == "s2023"  # not 2019, not the later 2025, not P2's
    hanging = compare_with_prior(index, refs["now_lat"])  # asked from the lateral: the PA goes left
    assert hanging.images == (refs["now_pa"], refs["last_year"]) and not hanging.reason
    assert compare_with_prior(index, refs["old"]).images == (refs["old"],)  # nothing earlier
    assert "no earlier study" in compare_with_prior(index, refs["old"]).reason
    assert "no date" in compare_with_prior(index, refs["undated"]).reason
    assert compare_with_prior(index, refs["future"]).images[1] == refs["now_pa"]  # the PA of 2024, not the lateral


def test_studies_sort_by_date_and_images_naturally_in_the_tree():
    refs = [ImageRef(f"/d/person{n}_x.jpeg", "raster", ImageMeta()) for n in (998, 99, 1000)]
    (patient,) = build_tree([(r, None) for r in refs])
    names = [Path(r.path).name for r in patient.studies[0].series[0].images]
    assert names == ["person99_x.jpeg", "person998_x.jpeg", "person1000_x.jpeg"]


def test_linked_range_keeps_the_place_and_zoom_relative_to_each_image():
    fit = linked_range((-10, -10, 1034, 1034), (0, 0, 1024, 1024), (0, 0, 2048, 2048))
    assert fit == pytest.approx((-20, -20, 2068, 2068))
    # the top-left quarter of a 1024 image -> the top-left quarter of a 2000 x 1000 one
    x0, y0, x1, y1 = linked_range((0, 0, 512, 512), (0, 0, 1024, 1024), (0, 0, 2000, 1000))
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((500, 250))
    assert x1 - x0 == pytest.approx(512 * (2000 / 1024 * 1000 / 1024) ** 0.5)
    # linking back gives the rectangle one started from (A -> B -> A), whatever the sizes
    back = linked_range((x0, y0, x1, y1), (0, 0, 2000, 1000), (0, 0, 1024, 1024))
    assert back == pytest.approx((0, 0, 512, 512))


def test_display_orientation_flips_and_turns_what_is_on_screen():
    a = np.arange(6).reshape(2, 3)  # 2 rows, 3 columns
    o = DisplayOrientation()
    assert o.is_identity and np.array_equal(o.orient(a), a)
    assert np.array_equal(o.then(FLIP_H).orient(a), a[:, ::-1])
    assert np.array_equal(o.then(FLIP_V).orient(a), a[::-1])
    assert np.array_equal(o.then(ROTATE_RIGHT).orient(a), np.rot90(a, -1))
    assert np.array_equal(o.then(ROTATE_LEFT).orient(a), np.rot90(a, 1))
    assert o.then(ROTATE_RIGHT).then(ROTATE_LEFT).is_identity
    assert o.then(FLIP_H).then(FLIP_H).is_identity
    assert o.then(ROTATE_RIGHT).then(ROTATE_RIGHT).describe() == "Rot 180°"
    # rotate then flip is not flip then rotate: the operations act on what is on screen
    assert o.then(ROTATE_RIGHT).then(FLIP_H) != o.then(FLIP_H).then(ROTATE_RIGHT)
    for turned in (o, o.then(FLIP_H), o.then(ROTATE_RIGHT), o.then(ROTATE_RIGHT).then(FLIP_V), o.then(ROTATE_LEFT)):
        # the affine map and the array view agree: pixel (x, y) lands where the array puts it
        m11, m12, m21, m22, dx, dy = turned.affine(a.shape)
        shown = turned.orient(a)
        assert shown.shape == turned.display_shape(a.shape)
        for y in range(2):
            for x in range(3):
                xd, yd = m11 * (x + 0.5) + m12 * (y + 0.5) + dx, m21 * (x + 0.5) + m22 * (y + 0.5) + dy
                assert shown[int(yd), int(xd)] == a[y, x], (turned, x, y)
    assert np.array_equal(a, np.arange(6).reshape(2, 3))  # views only: the stored array never changes


def test_orientation_markers_follow_flips_and_turns():
    markers = orientation_markers("L\\F")  # left R, right L, top H, bottom F
    flipped = DisplayOrientation().then(FLIP_H).markers(markers)
    assert (flipped.left, flipped.right, flipped.top, flipped.bottom) == ("L", "R", "H", "F")
    turned = DisplayOrientation().then(ROTATE_RIGHT).markers(markers)  # the head goes to the right
    assert (turned.left, turned.right, turned.top, turned.bottom) == ("F", "H", "R", "L")
    assert DisplayOrientation().markers(None) is None


def test_tag_rows_nest_sequences_name_private_creators_and_filter(shared_data: Path, tmp_path: Path):
    ds = pydicom.dcmread(shared_data / "dicom" / "pydicom-data_RG1" / "RG1_J2KR.dcm")
    block = ds.private_block(0x0099, "CXR VIEWER TEST", create=True)
    block.add_new(0x01, "LO", "a private note")
    ds.ImageComments = "x" * 500
    path = tmp_path / "tags.dcm"
    ds.save_as(path)
    rows = read_rows(str(path))
    by_tag = {r.tag: r for r in rows}
    assert by_tag["(0002,0010)"].name == "TransferSyntaxUID"  # file meta first
    assert by_tag["(0010,0020)"].value == "9RG1"
    seq = by_tag["(0008,2112)"]  # SourceImageSequence: one item, nested
    assert seq.vr == "SQ" and seq.children[0].name == "Item 1" and seq.children[0].children
    private = by_tag["(0099,1001)"]
    assert "CXR VIEWER TEST" in private.name and private.value == "a private note"
    assert by_tag["(0020,4000)"].value.endswith("(500 characters)") and len(by_tag["(0020,4000)"].value) < 200
    assert "not shown" in by_tag["(7FE0,0010)"].value  # pixel data: never read, never dumped
    # search by keyword, by tag number (any spelling) and by value
    found = filter_rows(rows, "patientid")  # PatientID and OtherPatientIDs
    assert "(0010,0020)" in [r.tag for r in found] and all("patientid" in r.name.lower() for r in found)
    assert [r.tag for r in filter_rows(rows, "0010,0020")] == ["(0010,0020)"]
    assert [r.tag for r in filter_rows(rows, "00100020")] == ["(0010,0020)"]
    assert [r.tag for r in filter_rows(rows, "private note")] == ["(0099,1001)"]
    nested = filter_rows(rows, "ReferencedSOPClassUID")  # inside the sequence: kept with its parents
    assert nested and nested[0].tag == "(0008,2112)" and nested[0].children[0].children[0].name == "ReferencedSOPClassUID"


def test_merge_indexes_adds_without_listing_twice():
    from cxr_viewer.io.index import merge_indexes
    from cxr_viewer.io.study import OpenError

    index, refs = _index()
    extra_ref = _ref("now_ap.dcm", "P1", "20240301", "AP")
    extra = StudyIndex((PatientNode("P1|DOE^J", "DOE^J", "P1", (_study("s2024", "20240301", extra_ref, refs["now_pa"]),
                                                                _study("s2010", "20100101", _ref("2010.dcm", "P1", "20100101")))),),
                       (OpenError("bad.jpeg", "truncated"),))
    merged = merge_indexes(index, extra)
    paths = [r.path for r in merged.images()]
    assert len(paths) == len(set(paths)) == 7 + 2  # now_pa only once
    (p1,) = [p for p in merged.patients if p.key == "P1|DOE^J"]
    assert [s.uid for s in p1.studies] == ["s2010", "s2019", "s2024", "s2025"]  # by date again
    s2024 = next(s for s in p1.studies if s.uid == "s2024")
    assert {r.path for r in s2024.series[0].images} == {"now_lat.dcm", "now_pa.dcm", "now_ap.dcm"}
    assert [e.path for e in merged.errors] == ["bad.jpeg"]


def test_remaining_text_from_the_pace_so_far():
    from cxr_viewer.common.tasks import remaining_text

    assert remaining_text(0, 10, 5.0) == "" and remaining_text(10, 10, 5.0) == ""
    assert remaining_text(1, 10, 2.0) == "about 18 s left"
    assert remaining_text(10, 100, 20.0) == "about 3 min 0 s left"
    assert remaining_text(1, 1000, 30.0) == "about 8 h 19 min left"
