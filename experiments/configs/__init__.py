"""The experiment scripts' default recipes, one module per job, as plain values.

Each ``configs/<job>.py`` has a ``get_config()`` returning everything the job
runs with when no flag is given: dataset, model, optimizer and schedule,
numbers of models, queries, the job's own settings.  Every key is named as
the flag that overrides it (``model_kwargs`` as ``--widths`` and
``--activation``); the flags take their defaults from here.

  python -c "from configs import lira; print(lira.get_config())"  # in experiments/

The recipe of a dataset other than the job's default one comes from
``recipes.DATASETS``.
"""
