"""Federation: the coordinator (phases, rounds, guarded aggregation, checkpoints, history), the
site runtime (what a site trains, keeps and sends), the message contract, and the Flower
simulation; with fedecho.deploy, the only layer that imports Flower."""
