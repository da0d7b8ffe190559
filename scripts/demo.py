"""`make demo`: ShopCardd end to end on the embedded profile, narrated as it runs.

Each part of the product adds its chapter as a module ``scripts/demo_*.py`` with a
``run(demo: Demo) -> None`` function; chapters run in the order of ``CHAPTERS`` and the
ones not yet written are skipped.
"""
