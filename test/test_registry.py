"""Registries load their own plugins: a member's module is imported on first use, ``names()`` and the
unknown-name error list every declared member without importing any, and each family's table names
the module that really registers each member (reference: the modules themselves, imported here)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from visloc_core.registry import Registry, UnknownNameError


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A module ``visloc_fake_registry_plugin`` on sys.path that registers ``fake`` in REG when imported."""
    (tmp_path / "visloc_fake_registry_plugin.py").write_text(
        textwrap.dedent(
            """
            from test_registry_target import REG

            @REG.register("fake")
            def make(x):
                return ("fake", x)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "visloc_fake_registry_plugin", raising=False)
    reg = Registry("widget", modules={"fake": "visloc_fake_registry_plugin"}, key="widget.name")
    target = type(sys)("test_registry_target")
    target.REG = reg
    monkeypatch.setitem(sys.modules, "test_registry_target", target)
    return reg


def test_get_imports_the_module_on_first_use(plugin_module):
    reg = plugin_module
    assert reg.names() == ["fake"] and "fake" in reg
    assert "visloc_fake_registry_plugin" not in sys.modules  # names() and `in` import nothing
    assert reg.build("fake", 3) == ("fake", 3)
    assert "visloc_fake_registry_plugin" in sys.modules


def test_unknown_name_names_the_key_and_every_known_one_without_importing(plugin_module):
    reg = plugin_module

    @reg.register("local")
    def local():
        return None

    with pytest.raises(UnknownNameError) as info:
        reg.get("nope")
    assert str(info.value) == "unknown widget 'nope' (widget.name); known: fake, local"
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)
    assert "visloc_fake_registry_plugin" not in sys.modules


def test_a_declared_module_that_does_not_register_its_name_is_named():
    reg = Registry("widget", modules={"ghost": "json"})
    with pytest.raises(ImportError, match="json was imported but registers no widget 'ghost'"):
        reg.get("ghost")


def test_registering_two_factories_under_one_name_fails():
    reg = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(KeyError, match="registered twice"):
        reg.register("a")(lambda: 2)


def test_families_list_their_members_without_importing_them():
    code = textwrap.dedent(
        """
        import sys
        from visloc_core.data.convert import CONVERTERS
        from visloc_core.localizers.loading import LOCALIZERS
        from visloc_core.localizers.relpose.base import RELPOSE_ESTIMATORS
        from visloc_core.models.registry import APR_MODELS
        before = set(sys.modules)
        print(APR_MODELS.names(), RELPOSE_ESTIMATORS.names(), LOCALIZERS.names(), CONVERTERS.names())
        for reg in (APR_MODELS, RELPOSE_ESTIMATORS, LOCALIZERS, CONVERTERS):
            try:
                reg.get("no_such_member")
            except ValueError as err:
                print(err)
        assert set(sys.modules) == before, sorted(set(sys.modules) - before)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "known: posenet, poseformer, poseformer_sem, hyperpose, ms_hyperpose, mvl_loc, pmnet" in out
    assert "unknown relative-pose estimator 'no_such_member' (estimator.name); known: xfeat, sift, learned" in out
    assert "unknown artifact kind 'no_such_member'; known: apr, relpose" in out
    assert "unknown dataset converter 'no_such_member'; known: 7scenes, cambridge, tartanair" in out


def test_every_declared_module_registers_its_member():
    from visloc_core.data.convert import CONVERTERS
    from visloc_core.localizers.loading import LOCALIZERS
    from visloc_core.localizers.relpose.base import RELPOSE_ESTIMATORS
    from visloc_core.models.descriptors import GLOBAL_DESCRIPTORS
    from visloc_core.models.registry import APR_MODELS

    for reg in (APR_MODELS, RELPOSE_ESTIMATORS, LOCALIZERS, CONVERTERS, GLOBAL_DESCRIPTORS):
        for name in reg.names():
            assert callable(reg.get(name)) or reg is CONVERTERS, (reg.kind, name)
    assert set(GLOBAL_DESCRIPTORS.names()) >= {"gem", "netvlad", "xfeat_vlad"}


def test_each_converter_declares_its_options_and_convert():
    """`visloc convert NAME` builds its parser and keyword arguments from the registry alone."""
    import argparse
    import inspect

    from visloc_core.data.convert import CONVERTERS

    for name in CONVERTERS.names():
        conv = CONVERTERS.get(name)
        p = argparse.ArgumentParser()
        conv.add_arguments(p)
        kwargs = conv.options(p.parse_args([]))
        assert set(kwargs) <= set(inspect.signature(conv.convert).parameters), name
