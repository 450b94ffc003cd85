"""The README's quick start is the contract: two commands, and CI runs the second one verbatim."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```bash")[1:]
    commands = []
    for block in blocks:
        body = block.split("```", 1)[0]
        commands += [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
    return commands


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    install_and_open, install_and_test = commands
    assert "cxr-viewer resources/samples" in install_and_open
    assert "pytest" in install_and_test
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert install_and_test in [line.strip() for line in ci]


def test_sample_studies_are_bundled_with_attribution():
    samples = REPO / "resources" / "samples"
    attribution = (samples / "ATTRIBUTION.md").read_text()
    files = [p for p in samples.rglob("*") if p.suffix.lower() in (".dcm", ".jpeg", ".jpg", ".png")]
    assert len(files) >= 5
    for f in files:
        assert f.name in attribution, f"{f.name} has no attribution line"
    assert "jsrt" not in " ".join(str(f).lower() for f in files)


def _install_line(distro: str) -> set[str]:
    section = (REPO / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith(f"| {distro}"))
    command = row.split("`")[1]
    assert " install " in command, row
    return set(command.split(" install ", 1)[1].split())


def test_quick_start_os_packages_are_those_the_gui_start_check_names():
    """The Debian and Fedora lines beside command 1 name what Qt's window needs, the same packages
    the start-up check names when a library is missing (less those the named ones pull in)."""
    from cxr_viewer.gui.app import XCB_LIBRARIES

    pulled_in = {"debian": {"libxcb1", "libx11-6", "libxcb-render0", "libxcb-shm0", "libxcb-sync1", "libxcb-xfixes0",
                            "libxkbcommon0", "libfreetype6"},
                 "fedora": {"libxcb", "libX11", "libxkbcommon", "freetype"}}
    for column, distro, python in ((1, "Debian", "python3-venv"), (2, "Fedora", "python3")):
        named = _install_line(distro)
        known = {entry[column] for entry in XCB_LIBRARIES}
        assert python in named
        assert named - {python} <= known, named - known  # no typo, nothing the check does not know
        assert known - pulled_in[distro.lower()] <= named, known - named  # nothing the window needs left out
