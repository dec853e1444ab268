"""PLOTS: every figure alphasel draws (plotly), by subject.

``tables`` (an alpha table: 3D surface, heatmap, layer-wise lines, per-kind boxes, differences),
``training`` (a run's alpha history: trajectories, surface over epochs, alpha change),
``comparison`` (runs compared across seeds: loss curves, final loss, cost, alpha shift),
``report`` (a study's HTML page) and ``output`` (writing a figure to HTML or an image).
"""
