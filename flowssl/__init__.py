"""The apps on top of the library and the two readout adapters: the ``flowssl`` command line
(pretrain, convert, bench, tables, show, demo, flow tools). Nothing in ``pretrain/``,
``d2_plugin/`` or ``mmseg_plugin/`` imports this package."""
