"""Indexing: Patient -> Study -> Series -> Image grouping, folders, recursion, cancellation, and
header-only reading (no pixel decoding while indexing)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cxr_testdata as td
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cxr_viewer.common.errors import ImageOpenError
from cxr_viewer.common.tasks import Cancelled, CancelToken, Progress, run_to_completion
from cxr_viewer.io import dicom as dicom_io
from cxr_viewer.io import index as index_mod
from cxr_viewer.io import raster as raster_io
from cxr_viewer.io.image import load_image
from cxr_viewer.io.index import index, index_paths

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def nih_pixels(shared_data) -> np.ndarray:
    return td.real_pixels(td.nih(shared_data))


def tile(pixels: np.ndarray, i: int, size: int = 128) -> np.ndarray:
    """The i-th distinct size x size piece of a real image."""
    per_row = pixels.shape[1] // size
    r, c = divmod(i % (per_row * (pixels.shape[0] // size)), per_row)
    return td.crop(pixels, size, r * size, c * size)


def test_grouping_by_patient_study_series_uids(tmp_path, nih_pixels):
    study_a, study_b, study_c = (generate_uid() for _ in range(3))
    s1, s2, s3, s4 = (generate_uid() for _ in range(4))
    p1 = dict(patient_id="P1", patient_name="Doe^Jane")
    specs = [  # file name, identity, instance, series description
        ("z_a_s1_i3.dcm", dict(p1, study_uid=study_a, series_uid=s1, study_date="20230101"), 3, "PA"),
        ("y_a_s1_i1.dcm", dict(p1, study_uid=study_a, series_uid=s1, study_date="20230101"), 1, "PA"),
        ("x_a_s1_i2.dcm", dict(p1, study_uid=study_a, series_uid=s1, study_date="20230101"), 2, "PA"),
        ("w_a_s2.dcm", dict(p1, study_uid=study_a, series_uid=s2, study_date="20230101"), 1, "LATERAL"),
        ("v_b_s3.dcm", dict(p1, study_uid=study_b, series_uid=s3, study_date="20220505"), 1, "PA"),
        ("u_c_s4.dcm", dict(patient_id="P2", patient_name="Doe^Jane", study_uid=study_c, series_uid=s4,
                            study_date="20210101"), None, "AP"),
    ]
    for i, (name, ident, instance, desc) in enumerate(specs):
        folder = tmp_path / ("nested" if i % 2 else "flat")
        td.write_image(folder / name, tile(nih_pixels, i), instance=instance, SeriesDescription=desc,
                       StudyDescription=f"study {ident['study_uid'][-4:]}", **ident)
    result = index([str(tmp_path)])
    assert result.errors == ()
    assert result.image_count == 6
    patients = {p.patient_id: p for p in result.patients}
    assert set(patients) == {"P1", "P2"}  # same name, different PatientID: two patients
    p1_node = patients["P1"]
    assert p1_node.name == "Doe^Jane"
    assert [s.uid for s in p1_node.studies] == [study_b, study_a]  # by study date
    assert [s.date for s in p1_node.studies] == ["20220505", "20230101"]
    a = p1_node.studies[1]
    assert {se.uid: len(se.images) for se in a.series} == {s1: 3, s2: 1}
    series1 = next(se for se in a.series if se.uid == s1)
    assert series1.description == "PA" and series1.modality == "DX"
    assert [im.instance_number for im in series1.images] == [1, 2, 3]  # by InstanceNumber, not name
    assert [Path(im.path).name for im in series1.images] == ["y_a_s1_i1.dcm", "x_a_s1_i2.dcm", "z_a_s1_i3.dcm"]
    assert patients["P2"].studies[0].series[0].images[0].instance_number is None
    # the tree is plain data: it goes to JSON and back
    doc = json.loads(json.dumps(result.to_dict()))
    assert len(doc["patients"]) == 2 and doc["errors"] == []


def test_files_without_uids_group_by_folder(tmp_path, nih_pixels):
    for folder in ("one", "two"):
        for i in range(2):
            ds = td.image_dataset(tile(nih_pixels, i), patient_id="ANON")
            del ds.StudyInstanceUID, ds.SeriesInstanceUID
            td.write(ds, tmp_path / folder / f"{i}.dcm")
    result = index([str(tmp_path)])
    assert result.errors == ()
    (patient,) = result.patients
    assert len(patient.studies) == 2
    for study in patient.studies:
        assert study.uid.startswith("no-study-uid:")
        (series,) = study.series
        assert len(series.images) == 2
        assert {Path(im.path).parent for im in series.images} == {Path(study.uid.split(":", 1)[1])}


def test_raster_images_one_study_per_folder(tmp_path, shared_data):
    normal = td.kermany_jpegs(shared_data, 3, "NORMAL")
    pneumonia = td.kermany_jpegs(shared_data, 2, "PNEUMONIA")
    (tmp_path / "NORMAL").mkdir()
    for p in normal[:2]:
        shutil.copyfile(p, tmp_path / "NORMAL" / p.name)
    (tmp_path / "PNEUMONIA" / "more").mkdir(parents=True)
    for p in pneumonia:
        shutil.copyfile(p, tmp_path / "PNEUMONIA" / p.name)
    shutil.copyfile(normal[2], tmp_path / "PNEUMONIA" / "more" / "x.jpeg")
    Image.open(normal[0]).convert("L").save(tmp_path / "PNEUMONIA" / "more" / "y.png")

    result = index([str(tmp_path)])
    assert result.errors == ()
    assert result.image_count == 6
    assert len(result.patients) == 1  # raster files carry no patient data: one node for them all
    studies = {s.description: s for s in result.patients[0].studies}
    assert set(studies) == {"NORMAL", "PNEUMONIA", "more"}
    for name, count in (("NORMAL", 2), ("PNEUMONIA", 2), ("more", 2)):
        (series,) = studies[name].series
        assert len(series.images) == count
        assert series.modality == "OT"
        assert all(im.kind == "raster" for im in series.images)
        names = [Path(im.path).name for im in series.images]
        assert names == sorted(names)
    ref = studies["NORMAL"].series[0].images[0]
    assert (ref.meta.rows, ref.meta.cols) == (224, 224) and ref.meta.transfer_syntax == "JPEG"


def test_recursion_skips_and_duplicates(tmp_path, shared_data, nih_pixels):
    deep = tmp_path / "a" / "b" / "c" / "d" / "e"
    td.write_image(deep / "deep.dcm", tile(nih_pixels, 0))
    td.write_image(tmp_path / "a" / "top.dcm", tile(nih_pixels, 1))
    shutil.copyfile(td.kermany_jpegs(shared_data, 1)[0], tmp_path / "a" / "b" / "pic.jpeg")
    # never images: skipped silently, not reported as errors
    (tmp_path / "a" / "README").write_text("notes")
    (tmp_path / "a" / "notes.txt").write_text("notes")
    shutil.copyfile(td.dicom_dir(shared_data) / "labels.csv", tmp_path / "a" / "labels.csv")
    td.write_image(tmp_path / "a" / ".hidden.dcm", tile(nih_pixels, 2))
    (tmp_path / "empty_folder").mkdir()

    result = index([str(tmp_path)])
    assert result.errors == ()
    names = sorted(Path(im.path).name for im in result.images())
    assert names == ["deep.dcm", "pic.jpeg", "top.dcm"]
    # the same files reached several ways are listed once
    again = index([str(tmp_path), str(tmp_path / "a"), str(deep / "deep.dcm"), str(deep / "deep.dcm")])
    assert sorted(Path(im.path).name for im in again.images()) == names
    # a file named explicitly is read even with a suffix a folder walk skips
    explicit = tmp_path / "image.txt"
    shutil.copyfile(deep / "deep.dcm", explicit)
    assert index([str(explicit)]).image_count == 1


def test_index_of_nothing(tmp_path):
    result = index([str(tmp_path)])
    assert result.patients == () and result.errors == () and result.image_count == 0
    assert index([]).image_count == 0


# --- progress and cancellation ------------------------------------------------------------------


@pytest.fixture
def forty_files(tmp_path, nih_pixels) -> Path:
    folder = tmp_path / "forty"
    for i in range(40):
        td.write_image(folder / f"{i:03d}.dcm", tile(nih_pixels, i, 64), instance=i + 1)
    return folder


def test_progress_reports(forty_files):
    gen = index_paths([str(forty_files)])
    progress: list[Progress] = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert result.image_count == 40
    reading = [p for p in progress if p.stage == "reading headers"]
    assert reading and reading[-1].done == reading[-1].total == 40
    assert [p.done for p in reading] == sorted(p.done for p in reading)
    assert reading[-1].fraction == 1.0
    assert Progress("listing", 3, 0).fraction is None


def test_cancel_before_start_raises_cancelled(forty_files):
    token = CancelToken()
    token.cancel()
    assert token.cancelled
    with pytest.raises(Cancelled):
        run_to_completion(index_paths([str(forty_files)], token))
    with pytest.raises(Cancelled):
        run_to_completion(index_paths([str(forty_files / "000.dcm")], token))


def test_cancel_midway_stops_reading(forty_files, monkeypatch):
    calls = []
    real_read_any = index_mod.read_any

    def counting(path):
        calls.append(path)
        return real_read_any(path)

    monkeypatch.setattr(index_mod, "read_any", counting)
    token = CancelToken()
    gen = index_paths([str(forty_files)], token)
    with pytest.raises(Cancelled):
        for progress in gen:
            if progress.stage == "reading headers":
                token.cancel()
    assert 0 < len(calls) < 40
    # the generator is finished: it cannot be resumed into a result
    with pytest.raises(StopIteration):
        next(gen)


def test_cancel_while_listing(tmp_path, nih_pixels):
    for i in range(5):
        (tmp_path / f"d{i}").mkdir()
        td.write_image(tmp_path / f"d{i}" / "x.dcm", tile(nih_pixels, i, 64))
    token = CancelToken()
    gen = index_paths([str(tmp_path)], token)
    first = next(gen)
    assert first.stage == "listing"
    token.cancel()
    with pytest.raises(Cancelled):
        next(gen)


# --- headers only ---------------------------------------------------------------------------------


def test_three_hundred_files_index_without_decoding_pixels(tmp_path, shared_data, nih_pixels, monkeypatch):
    folder = tmp_path / "many"
    series = [generate_uid() for _ in range(10)]
    study = generate_uid()
    for i in range(300):
        td.write_image(folder / f"s{i % 10:02d}" / f"im{i:04d}.dcm", tile(nih_pixels, i, 64),
                       study_uid=study, series_uid=series[i % 10], instance=i // 10 + 1)
    for p in td.kermany_jpegs(shared_data, 10, "PNEUMONIA"):
        shutil.copyfile(p, folder / p.name)
    shutil.copyfile(td.rg1(shared_data, "J2KR"), folder / "j2k.dcm")

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixel data decoded while indexing")

    import PIL.ImageFile
    import pydicom.pixels

    monkeypatch.setattr(dicom_io, "pixel_array", no_decoding)
    monkeypatch.setattr(dicom_io, "decode_frame", no_decoding)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_decoding)
    monkeypatch.setattr(Dataset, "pixel_array", property(no_decoding))
    monkeypatch.setattr(raster_io, "decode_frame", no_decoding)
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)

    result = index([str(folder)])
    assert result.errors == ()
    assert result.image_count == 311
    dicom_patient = next(p for p in result.patients if p.patient_id == "TESTPAT")
    (study_node,) = dicom_patient.studies
    assert len(study_node.series) == 10
    assert all(len(se.images) == 30 for se in study_node.series)
    for se in study_node.series:
        assert [im.instance_number for im in se.images] == list(range(1, 31))

    # the guards were real: decoding does go through them
    ref = study_node.series[0].images[0]
    with pytest.raises(ImageOpenError, match="decoded while indexing"):  # load_image turns any error into one line
        load_image(ref)
    monkeypatch.undo()
    np.testing.assert_array_equal(load_image(ref).stored, tile(nih_pixels, 0, 64))


def test_files_are_sniffed_by_content_not_suffix(tmp_path, shared_data):
    """A real JPEG without a suffix opens as a JPEG; a real DICOM named .png opens as DICOM."""
    jpeg = tmp_path / "IM0001"
    shutil.copyfile(td.kermany_jpegs(shared_data, 1)[0], jpeg)
    dcm_png = tmp_path / "looks_like.png"
    shutil.copyfile(td.nih(shared_data), dcm_png)
    result = index([str(tmp_path)])
    assert result.errors == (), result.errors
    kinds = {im.path: im.kind for p in result.patients for st in p.studies for se in st.series for im in se.images}
    assert kinds == {str(jpeg): "raster", str(dcm_png): "dicom"}
    np.testing.assert_array_equal(load_image(index([str(jpeg)]).patients[0].studies[0].series[0].images[0]).stored,
                                  td.kermany_grey(td.kermany_jpegs(shared_data, 1)[0]))


def test_folders_are_listed_depth_first_in_name_order(tmp_path):
    """As a file manager's tree lists them: a folder's subfolders (natural name order) before the
    folders beside it, the paths in the order given; deep and wide trees alike."""
    from cxr_viewer.common.tasks import run_to_completion
    from cxr_viewer.io.index import collect_files

    layout = ["b/2/x.png", "b/10/y.png", "b/z.png", "a/1/2/w.png", "a/v.png", "c/u.png"]
    for rel in layout:
        (tmp_path / "t" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "t" / rel).write_bytes(b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "o.png").write_bytes(b"x")
    files, errors = run_to_completion(collect_files([str(tmp_path / "other"), str(tmp_path / "t")]))
    rel = [os.path.relpath(f, tmp_path) for f in files]
    assert not errors
    assert rel == ["other/o.png", "t/a/v.png", "t/a/1/2/w.png", "t/b/z.png", "t/b/2/x.png", "t/b/10/y.png", "t/c/u.png"]
    wide = tmp_path / "wide"
    for i in range(300):
        (wide / f"d{i}" / "e").mkdir(parents=True)
        (wide / f"d{i}" / "e" / "f.png").write_bytes(b"x")
    files, _ = run_to_completion(collect_files([str(wide)]))
    assert [os.path.relpath(f, wide) for f in files] == [f"d{i}/e/f.png" for i in range(300)]
