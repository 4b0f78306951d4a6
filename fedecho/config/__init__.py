"""Run configuration: typed dataclasses (data, model, task, train, SSL, federation) composed from
Hydra YAML in ``conf/`` with command-line overrides, validated with errors that name the key."""
