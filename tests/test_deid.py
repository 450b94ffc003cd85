"""De-identification (PS3.15 Annex E basic profile via dicom-anonymizer) of every real DICOM we
have, and results (SR, SC) built from de-identified copies."""

from __future__ import annotations

import copy
import datetime
import io
import warnings
from pathlib import Path

import cxr_testdata as td
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID

from cxr_viewer.ai import overlay
from cxr_viewer.ai.inference import Scorer
from cxr_viewer.ai.model_store import default_model_path
from cxr_viewer.clinical import dicom_results as dr
from cxr_viewer.clinical.deid import (
    IMPLEMENTATION_VERSION_NAME,
    Deidentifier,
    action_for,
    burned_in_identifiers,
    deidentify_file,
    identifying_attributes,
)
from cxr_viewer.io.image import open_image

SAMPLE_DIR = td.REPO_ROOT / "resources" / "samples" / "dicom"
RG1 = SAMPLE_DIR / "RG1_J2KR.dcm"
#: The library's dummy values: an original that already held one cannot "change".
DUMMIES = {"00010101", "000000.00", "00010101010101.000000+0000", "ANONYMIZED", "0", "000Y"}
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def sample_dicoms() -> list[Path]:
    return sorted(SAMPLE_DIR.glob("*.dcm"))


def shared_dicoms() -> list[Path]:
    return td.all_dicoms(td.SHARED_DATA) if td.SHARED_DATA.is_dir() else []


def read_or_skip(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - depends on the shared data
        pytest.skip(f"pydicom cannot read {path.name}: {exc}")


def secrets_of(ds: Dataset) -> list[str]:
    """What must not survive: name parts, IDs, accession, institution, referring physician,
    station, other IDs, and the original instance UIDs (at any depth)."""
    out: list[str] = []
    name = str(ds.get("PatientName", "") or "")
    out += [p for p in name.replace("=", "^").split("^") if len(p) >= 3]
    for kw in ("PatientID", "AccessionNumber", "InstitutionName", "ReferringPhysicianName", "StationName",
               "InstitutionalDepartmentName", "DeviceSerialNumber"):
        value = str(ds.get(kw, "") or "").strip()
        if len(value) >= 3:
            out.append(value)
    other = ds.get("OtherPatientIDs")
    values = list(other) if isinstance(other, (list, MultiValue)) else ([other] if other else [])
    out += [str(v) for v in values if len(str(v)) >= 3]

    def uids(dataset, elem):
        if elem.VR == "UI" and elem.keyword in (*UID_KEYWORDS, "ReferencedSOPInstanceUID") and elem.value:
            out.append(str(elem.value))

    ds.walk(uids)
    return out


def dates_of(ds: Dataset) -> list[str]:
    """The DA values (and DT date parts) of ``ds`` at any depth, as YYYYMMDD."""
    out: set[str] = set()

    def visit(dataset, elem):
        if elem.VR in ("DA", "DT") and elem.value:
            values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
            out.update(str(v)[:8] for v in values if len(str(v)) >= 8)

    ds.walk(visit)
    return sorted(out)


def check_dates_shifted(before: Dataset, out: Dataset, offset: int) -> None:
    """Each non-empty DA of ``before`` (top level and in kept sequences) is in ``out`` moved by
    ``offset`` days, or empty when the move would leave 1900 or the original was no date."""
    seen = []

    def visit(dataset, elem):
        if elem.VR == "DA":
            seen.append(str(elem.value or ""))
            assert str(elem.value or "") != "00010101"

    out.walk(visit)
    for elem in before:
        if elem.VR != "DA" or not elem.value or elem.keyword not in out:
            continue
        try:
            day = datetime.datetime.strptime(str(elem.value), "%Y%m%d").date()
        except ValueError:
            assert not out[elem.keyword].value, elem.keyword
            continue
        expected = day + datetime.timedelta(days=offset)
        shown = str(out[elem.keyword].value or "")
        if expected.year < 1900:
            assert shown == "", elem.keyword
        else:
            assert shown == expected.strftime("%Y%m%d"), (elem.keyword, str(elem.value), shown)
    for value in seen:
        assert value == "" or datetime.datetime.strptime(value, "%Y%m%d").year >= 1900


def header_bytes(ds: Dataset) -> bytes:
    """The data set serialised without its pixel data (pixel bytes could match 3 letters by chance)."""
    head = copy.deepcopy(ds)
    if "PixelData" in head:
        del head.PixelData
    buf = io.BytesIO()
    head.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def file_header_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    pos = raw.rfind(b"\xe0\x7f\x10\x00")
    return raw[:pos] if pos > 0 else raw


def assert_no_secrets(data: bytes, secrets: list[str], where: str) -> None:
    for secret in secrets:
        for encoded in {secret.encode("latin-1", "ignore"), secret.encode("utf-8")}:
            assert encoded not in data, f"{secret!r} survives in {where}"


def check_deidentified(path: Path, tmp_path: Path) -> None:
    ds = read_or_skip(path)
    before = copy.deepcopy(ds)
    d = Deidentifier()
    out = d.dataset(ds)

    # the input is untouched
    assert ds == before and ds.file_meta == before.file_meta
    # every attribute the profile acts on has lost its value
    found = identifying_attributes(before)
    assert "PatientID" in found or not str(before.get("PatientID", "")).strip()
    for keyword, value in found.items():
        if keyword not in out or out[keyword].VR == "SQ" or value in DUMMIES:
            continue
        if out[keyword].VR == "TM":  # Modified Dates option, whole-day shift: times are kept
            assert str(out[keyword].value) == value, keyword
            continue
        assert str(out[keyword].value) != value, f"{keyword} kept {value!r}"
    # every date (DA, at any depth) moved by the patient's offset, valid, never the library's dummy
    offset = d.date_offset(str(before.get("PatientID", "") or "").strip() or str(before.get("PatientName", "")))
    assert -3652 <= offset <= -365
    check_dates_shifted(before, out, offset)
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    for kw in UID_KEYWORDS:
        if kw in before:
            assert out[kw].value == d.uid(before[kw].value) != before[kw].value
            assert UID(out[kw].value).is_valid
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.PatientIdentityRemoved == "YES"
    assert "Basic Application Level Confidentiality Profile" in out.DeidentificationMethod[0]
    assert any("dicom-anonymizer" in v for v in out.DeidentificationMethod)
    assert [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in out.DeidentificationMethodCodeSequence] == [
        ("113100", "DCM", "Basic Application Confidentiality Profile"),
        ("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option")]
    assert out.PatientID.startswith("ANON-") and out.PatientName.family_name == out.PatientID
    assert str(out.PatientName) == out.PatientID + "^"  # a family name, not the retired single-value form
    private = []
    out.walk(lambda dataset, elem: private.append(elem.tag) if elem.tag.is_private else None)
    assert private == []
    # pixels, and what is needed to show them, unchanged
    assert out.PixelData == before.PixelData
    assert out.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    for kw in ("Rows", "Columns", "PhotometricInterpretation", "BitsStored", "SOPClassUID"):
        assert out.get(kw) == before.get(kw)

    # nothing identifying anywhere, original dates included: in memory and in the file written
    # (an original date that a shifted one happens to equal is no leak: 2004-08-26 moved back 3,257
    # days is RG1's other date, 1995-09-26, once in 3,288 runs; every date moved is checked above)
    secrets = secrets_of(before) + sorted(set(dates_of(before)) - set(dates_of(out)))
    assert secrets
    assert_no_secrets(header_bytes(out), secrets, f"de-identified {path.name}")
    dst = tmp_path / f"deid_{path.name}"
    written = deidentify_file(str(path), str(dst), d)
    assert written.SOPInstanceUID == out.SOPInstanceUID  # same session, same UIDs
    assert_no_secrets(file_header_bytes(dst), secrets, f"written {dst.name}")
    back = pydicom.dcmread(dst)
    assert back.PixelData == before.PixelData and back.SOPInstanceUID == out.SOPInstanceUID


@pytest.mark.parametrize("path", sample_dicoms(), ids=lambda p: p.name)
def test_sample_dicoms_are_deidentified(path, tmp_path):
    check_deidentified(path, tmp_path)


def test_shared_dicoms_are_deidentified(shared_data, tmp_path):
    paths = td.all_dicoms(shared_data)
    assert len(paths) >= 6
    for path in paths:
        check_deidentified(path, tmp_path)


def test_uids_are_consistent_within_a_session_only():
    ds = pydicom.dcmread(RG1, stop_before_pixels=True)
    one = Deidentifier()
    a, b = one.dataset(ds), one.dataset(ds)
    for kw in UID_KEYWORDS[:3]:
        assert a[kw].value == b[kw].value == one.uid(ds[kw].value)
    assert a.PatientID == b.PatientID
    other = Deidentifier().dataset(ds)
    for kw in UID_KEYWORDS[:3]:
        assert other[kw].value != a[kw].value
    assert other.PatientID != a.PatientID
    # UIDs of the standard itself are no identifiers
    assert one.uid(ds.SOPClassUID) == ds.SOPClassUID and a.SOPClassUID == ds.SOPClassUID


def test_library_global_uid_map_is_not_used():
    from dicomanonymizer import simpledicomanonymizer as sda

    size = len(sda.dictionary)
    Deidentifier().dataset(pydicom.dcmread(RG1, stop_before_pixels=True))
    assert len(sda.dictionary) == size


def test_references_between_images_of_one_study(shared_data):
    """RG1_J2KR's Source Image Sequence points at RG1_UNCR: kept valid after de-identification."""
    uncr = pydicom.dcmread(td.rg1(shared_data, "UNCR"), stop_before_pixels=True)
    j2kr = pydicom.dcmread(td.rg1(shared_data, "J2KR"), stop_before_pixels=True)
    assert j2kr.SourceImageSequence[0].ReferencedSOPInstanceUID == uncr.SOPInstanceUID
    d = Deidentifier()
    new_j2kr, new_uncr = d.dataset(j2kr), d.dataset(uncr)  # reference seen before the referenced file
    assert new_j2kr.SourceImageSequence[0].ReferencedSOPInstanceUID == new_uncr.SOPInstanceUID
    assert new_j2kr.StudyInstanceUID == new_uncr.StudyInstanceUID != uncr.StudyInstanceUID
    assert new_j2kr.PatientID == new_uncr.PatientID


def test_identifying_attributes_come_from_the_profile_table():
    ds = pydicom.dcmread(RG1, stop_before_pixels=True)
    found = identifying_attributes(ds)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
               "StudyInstanceUID", "SOPInstanceUID", "StudyDate", "ReferringPhysicianName", "SourceImageSequence"):
        assert kw in found, kw
    assert found["PatientName"] == "CompressedSamples^RG1" and found["PatientID"] == "9RG1"
    for kw in ("Modality", "Rows", "SOPClassUID", "PhotometricInterpretation", "DateOfLastCalibration"):
        assert kw not in found, kw  # kept by the profile, or empty
    assert action_for(0x00100010) == "Z" and action_for(0x00080018) == "U"
    assert action_for(0x00280010) is None and action_for(0x00091001) == "X"


def test_nested_and_free_text_identifiers_are_removed():
    """Identifiers hidden where the profile's table does not look: a private block, a kept
    free-text attribute, and a code meaning inside a kept sequence (headers written by hand
    around the real RG1 file)."""
    ds = pydicom.dcmread(RG1, stop_before_pixels=True)
    ds.private_block(0x0009, "CXR TEST", create=True).add_new(0x01, "LO", "CompressedSamples^RG1")
    ds.ManufacturerModelName = "Cassette of patient 9RG1"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator = "51185008", "SCT"
    region.CodeMeaning = "Chest of CompressedSamples (exam Number)"
    ds.AnatomicRegionSequence = Sequence([region])
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence[0].ReferencedSOPClassUID = ds.SOPClassUID
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = ds.SOPInstanceUID
    d = Deidentifier()
    out = d.dataset(ds)
    data = header_bytes(out)
    assert_no_secrets(data, ["CompressedSamples", "9RG1", "exam Number", "CXR TEST", ds.SOPInstanceUID], "copy")
    assert out.ManufacturerModelName.startswith("Cassette of patient ")
    assert out.AnatomicRegionSequence[0].CodeValue == "51185008"  # the code itself is kept
    ref = out.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == out.SOPInstanceUID  # a reference to itself, kept valid
    assert ref.ReferencedSOPClassUID == ds.SOPClassUID


def rg1_copy(tmp_path: Path, edit, name: str = "rg1_edited.dcm") -> Path:
    """The real RG1 sample with its header edited by ``edit(ds)``, written to tmp_path."""
    ds = pydicom.dcmread(RG1)
    edit(ds)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def reread_strictly(path: Path) -> Dataset:
    """Read ``path`` back with every element parsed, any pydicom warning being an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = pydicom.dcmread(path)
        ds.walk(lambda dataset, elem: elem.value)
        _ = [elem.value for elem in ds.file_meta]
    return ds


def test_file_meta_keeps_only_the_whitelist(tmp_path):
    """Private Information (0002,0102) and its creator UID (0002,0100) can carry names and IDs;
    only the whitelisted file meta survives, with new implementation values."""
    creator = "1.2.826.0.1.3680043.9.7777.42"

    def edit(ds):
        ds.file_meta.PrivateInformationCreatorUID = creator
        ds.file_meta.PrivateInformation = b"patient Hanako^Yamada, MRN 9RG1-X4242 "
        ds.file_meta.SourceApplicationEntityTitle = "RADIOLOGY_ST1"
        ds.file_meta.ImplementationVersionName = "SITEPACS_7"

    src = rg1_copy(tmp_path, edit)
    original = pydicom.dcmread(src, stop_before_pixels=True)
    assert original.file_meta.PrivateInformation.startswith(b"patient Hanako")  # really in the source
    dst = tmp_path / "deid.dcm"
    deidentify_file(str(src), str(dst), Deidentifier())
    data = file_header_bytes(dst)
    for secret in (b"Hanako", b"Yamada", b"9RG1-X4242", creator.encode(), b"RADIOLOGY_ST1", b"SITEPACS_7",
                   original.file_meta.ImplementationClassUID.encode(), original.SOPInstanceUID.encode()):
        assert secret not in data, secret
    back = reread_strictly(dst)
    meta = back.file_meta
    assert sorted(elem.keyword for elem in meta) == sorted([
        "FileMetaInformationGroupLength", "FileMetaInformationVersion", "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID", "TransferSyntaxUID", "ImplementationClassUID", "ImplementationVersionName"])
    assert meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID != original.SOPInstanceUID
    assert meta.MediaStorageSOPClassUID == original.file_meta.MediaStorageSOPClassUID
    assert meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert meta.ImplementationClassUID == pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert back.PixelData == pydicom.dcmread(src).PixelData


def test_sequences_removed_or_emptied_by_the_profile(tmp_path):
    """X removes a sequence; Z and X/Z (Referenced Study Sequence) leave it empty, with no item
    whose Type 1 Referenced SOP Class/Instance UIDs would be emptied."""
    assert action_for(0x00081110) == "X/Z" and action_for(0x00101002) == "X" and action_for(0x0040A088) == "Z"

    def edit(ds):
        study = Dataset()
        study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
        study.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.9.7777.1.9"
        ds.ReferencedStudySequence = Sequence([study])
        other = Dataset()
        other.PatientID, other.TypeOfPatientID = "OTHER-ID-771", "TEXT"
        ds.OtherPatientIDsSequence = Sequence([other])
        observer = Dataset()
        observer.CodeValue, observer.CodingSchemeDesignator, observer.CodeMeaning = "D12345", "99HOSP", "Dr Observer"
        ds.VerifyingObserverIdentificationCodeSequence = Sequence([observer])

    src = rg1_copy(tmp_path, edit)
    dst = tmp_path / "deid.dcm"
    out = deidentify_file(str(src), str(dst), Deidentifier())
    for ds in (out, reread_strictly(dst)):
        assert "ReferencedStudySequence" in ds and len(ds.ReferencedStudySequence) == 0
        assert "VerifyingObserverIdentificationCodeSequence" in ds
        assert len(ds.VerifyingObserverIdentificationCodeSequence) == 0
        assert "OtherPatientIDsSequence" not in ds
        empty_type1: list[str] = []

        def find_empty(dataset, elem, found=empty_type1):
            if elem.keyword in ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID") and not elem.value:
                found.append(elem.keyword)

        ds.walk(find_empty)
        assert empty_type1 == []
    assert_no_secrets(file_header_bytes(dst), ["OTHER-ID-771", "1.2.826.0.1.3680043.9.7777.1.9", "Dr Observer"],
                      "de-identified copy")


def test_burned_in_identifiers(tmp_path):
    ds = pydicom.dcmread(RG1, stop_before_pixels=True)
    assert "BurnedInAnnotation" not in ds and not burned_in_identifiers(ds)
    for value, expected in (("YES", True), ("NO", False), ("", False)):
        path = rg1_copy(tmp_path, lambda d, v=value: setattr(d, "BurnedInAnnotation", v), f"bia_{value}.dcm")
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert burned_in_identifiers(header) is expected, value
        assert burned_in_identifiers(dr.read_source_header(path)) is expected
    # padding and case do not matter
    ds.BurnedInAnnotation = "YES "
    assert burned_in_identifiers(ds)
    # documented gap: a Secondary Capture / OT image without the attribute counts as unknown = False
    sc = copy.deepcopy(ds)
    del sc.BurnedInAnnotation
    sc.SOPClassUID, sc.Modality = "1.2.840.10008.5.1.4.1.1.7", "OT"
    assert not burned_in_identifiers(sc)
    # the de-identifier itself still makes a copy (the export layer refuses), which says so too
    yes = pydicom.dcmread(tmp_path / "bia_YES.dcm")
    out = Deidentifier().dataset(yes)
    assert out.PixelData == yes.PixelData and burned_in_identifiers(out)


# --- results from a de-identified source --------------------------------------------------------


@pytest.fixture(scope="module")
def rg1_result():
    path = default_model_path()
    assert path, "models/default.safetensors is missing"
    image = open_image(str(RG1))
    return image, Scorer.from_file(str(path)).score(image)


def test_results_from_a_deidentified_source(rg1_result, tmp_path):
    image, result = rg1_result
    original = pydicom.dcmread(RG1)
    d = Deidentifier()
    copy_path = tmp_path / "rg1_deid.dcm"
    deidentify_file(str(RG1), str(copy_path), d)
    source = dr.read_source_header(copy_path)
    assert source.SOPInstanceUID == d.uid(original.SOPInstanceUID)

    sr_path, sc_path = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
    dr.write_dataset(dr.build_sr(source, result), sr_path)
    dr.write_dataset(dr.build_secondary_capture(source, overlay.annotated_rgb(image, result), result), sc_path)
    secrets = secrets_of(original)
    for path in (sr_path, sc_path):
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID == d.uid(original.StudyInstanceUID)
        assert ds.PatientID == source.PatientID and ds.PatientID.startswith("ANON-")
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert_no_secrets(file_header_bytes(path), secrets, path.name)
        assert dr.vr_problems(ds) == []
    sr = pydicom.dcmread(sr_path)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source.SeriesInstanceUID
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    sc = pydicom.dcmread(sc_path)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    rendered = sc.pixel_array
    assert rendered.shape == (*image.shape, 3)
    # the de-identified copy decodes to the very same pixels as the original
    assert np.array_equal(pydicom.dcmread(copy_path).pixel_array, original.pixel_array)


# --- dates: PS3.15 Retain Longitudinal Temporal Information with Modified Dates ------------------


def _days(a: str, b: str) -> int:
    return (datetime.datetime.strptime(a, "%Y%m%d") - datetime.datetime.strptime(b, "%Y%m%d")).days


def test_two_studies_of_one_patient_keep_order_and_interval():
    """The real RG1 header and a later study of the same patient (its dates 37 days later, its
    own Study UID): one Deidentifier shifts both by the same offset; the age is kept."""
    first = pydicom.dcmread(RG1, stop_before_pixels=True)
    second = copy.deepcopy(first)
    second.StudyInstanceUID, second.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    later = datetime.datetime.strptime(first.StudyDate, "%Y%m%d") + datetime.timedelta(days=37)
    second.StudyDate = later.strftime("%Y%m%d")
    d = Deidentifier()
    a, b = d.dataset(first), d.dataset(second)
    assert a.PatientID == b.PatientID and a.StudyInstanceUID != b.StudyInstanceUID
    assert _days(b.StudyDate, a.StudyDate) == 37  # order and interval kept
    assert a.StudyDate != first.StudyDate and b.StudyDate != second.StudyDate
    assert a.PatientBirthDate == b.PatientBirthDate != first.PatientBirthDate
    assert _days(a.StudyDate, a.PatientBirthDate) == _days(first.StudyDate, first.PatientBirthDate)  # same age
    assert _days(a.SeriesDate, a.StudyDate) == _days(first.SeriesDate, first.StudyDate)
    assert a.StudyTime == first.StudyTime  # whole days: times unchanged
    assert d.date_offsets == {"9RG1": _days(a.StudyDate, first.StudyDate)}


def test_dates_edge_cases_are_valid_or_empty():
    """Real RG1 header with hand-written dates: one near 1900, a retired YYYY.MM.DD form, a
    non-date, a DT with time and UTC offset, a date inside a kept sequence and one in free text."""
    ds = pydicom.dcmread(RG1, stop_before_pixels=True)
    ds.PatientBirthDate = "19000301"  # shifted by >= 1 year back: before 1900, so emptied
    with warnings.catch_warnings():  # pydicom warns about the invalid values we write on purpose
        warnings.simplefilter("ignore")
        ds["StudyDate"].value = "2004.08.26"
        ds["ContentDate"].value = "20231399"
    ds.AcquisitionDateTime = "20040826101530.25+0100"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "51185008", "SCT", "Chest"
    region.ContextGroupVersion = "20040826"  # dates the coding resource, not the patient: kept
    region.InstanceCreationDate = "20040826"  # a date inside a kept sequence: shifted
    ds.AnatomicRegionSequence = Sequence([region])
    ds.ManufacturerModelName = "Cassette loaded 2004-08-26"
    d = Deidentifier()
    out = d.dataset(ds)
    days = d.date_offset("9RG1")
    shifted = (datetime.date(2004, 8, 26) + datetime.timedelta(days=days)).strftime("%Y%m%d")
    assert out.PatientBirthDate == "" and out.ContentDate == ""
    assert out.StudyDate == shifted
    assert out.AcquisitionDateTime == shifted + "101530.25+0100"
    assert out.AnatomicRegionSequence[0].InstanceCreationDate == shifted
    assert out.AnatomicRegionSequence[0].ContextGroupVersion == "20040826"
    assert "2004-08-26" not in out.ManufacturerModelName
    assert dr.vr_problems(out) == []
    del out.AnatomicRegionSequence  # the coding resource's date is the only 20040826 allowed
    assert b"20040826" not in header_bytes(out) and b"19000301" not in header_bytes(out)
