"""cpcrl's Hydra configs (shipped as the package cpcrl.conf). Importing it stores the typed schemas the yaml files
build on, so they exist before Hydra reads any yaml (the CLI, the compose API in tests, sweeps on other hosts)."""

from cpcrl.config import register_schemas

register_schemas()
