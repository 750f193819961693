"""Packaging entry point; the metadata lives in setup.cfg."""

from setuptools import find_packages, setup

# twisted/plugins is a namespace directory shared with Twisted itself: it is
# listed explicitly (no __init__.py) so that twistd finds our plugin.
setup(
    packages=[*find_packages(include=["sipproxy", "sipproxy.*"]), "twisted.plugins"],
    package_dir={"": "."},
    package_data={"sipproxy": ["py.typed"], "twisted.plugins": ["sipproxy_plugin.py"]},
)
