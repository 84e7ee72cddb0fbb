"""settings: the last bundle folder is remembered in a small JSON file; broken files are ignored."""

from __future__ import annotations

from napari_allbag.io import settings


def test_remembers_the_last_bundle_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(settings.CONFIG_DIR_ENV, str(tmp_path / "config"))
    assert settings.last_bundle_dir() is None
    settings.remember_bundle_dir(tmp_path / "bundle")
    assert settings.last_bundle_dir() == (tmp_path / "bundle").resolve()
    settings.save_settings({"other": 1})
    assert settings.load_settings()["other"] == 1
    assert settings.last_bundle_dir() == (tmp_path / "bundle").resolve()
    assert [p.name for p in (tmp_path / "config").iterdir()] == ["settings.json"]


def test_a_broken_settings_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv(settings.CONFIG_DIR_ENV, str(tmp_path))
    (tmp_path / "settings.json").write_text("{broken")
    assert settings.load_settings() == {}
    settings.remember_bundle_dir(tmp_path / "b")
    assert settings.last_bundle_dir() == (tmp_path / "b").resolve()


def test_default_location_is_the_user_config_folder(monkeypatch):
    monkeypatch.delenv(settings.CONFIG_DIR_ENV, raising=False)
    assert settings.config_dir().name == "napari-allbag"
