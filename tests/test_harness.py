"""The test harness itself: which worker builds a shared project (conftest.group_of, _claim)."""

from __future__ import annotations

import conftest
import pytest


@pytest.fixture
def clean_owners(monkeypatch):
    monkeypatch.setattr(conftest, "_OWNER", {})


def test_files_that_share_projects_are_one_unit():
    assert conftest.group_of("tests/test_e2e.py") == conftest.group_of("/x/tests/test_image.py") == "shared-builds"
    assert conftest.group_of("tests/test_docker.py") == "test_docker.py"
    assert set(conftest.SLOW_FIRST) - {"shared-builds"} <= {p.name for p in conftest.REPO.glob("tests/test_*.py")}


@pytest.mark.parametrize("worker", [None, "gw1"])
def test_a_project_asked_for_by_two_units_fails(tmp_path, monkeypatch, clean_owners, worker):
    projects = tmp_path / "popen-gw1" / "projects0"
    projects.mkdir(parents=True)
    if worker:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    else:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_e2e.py::test_one (setup)")
    conftest._claim(projects, "gate-app")
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_binary_safety.py::test_two (setup)")
    conftest._claim(projects, "gate-app")  # the same unit: fine
    if worker:  # another worker has its own _OWNER: only the claim file tells it
        assert (tmp_path / "project-owners" / "gate-app").read_text() == "shared-builds"
        assert [p.name for p in (tmp_path / "project-owners").iterdir()] == ["gate-app"]
        monkeypatch.setattr(conftest, "_OWNER", {})
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_docker.py::test_three (setup)")
    with pytest.raises(pytest.fail.Exception, match="gate-app is built by group shared-builds and asked for by "
                                                     "test_docker.py"):
        conftest._claim(projects, "gate-app")
