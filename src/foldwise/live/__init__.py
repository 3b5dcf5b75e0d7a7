"""Watching training: monitors that can never break or slow it, and the Visdom server.

- ``settings``: the environment variables and addresses of the live view;
- ``visdom_monitor``: the Visdom monitor (a bounded queue and a sender thread);
- ``dvclive_monitor``: per-epoch metrics in dvclive's files;
- ``monitors``: which monitors a stage gets (``monitor_from_env``);
- ``assets``, ``server``: Visdom's pinned browser assets and the ``foldwise-visdom`` server.
"""
