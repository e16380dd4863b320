"""Blockfold's storage engine: inline-dedup block pool, linked clones, rebuild, fsck.

Nothing here imports Textual, the console or the widgets.
"""
