"""The live score / I(q) plot follows the analysis documents."""

from __future__ import annotations

import numpy as np

from pbi_bluesky.live import ANALYSIS_STREAM, LiveScorer
from pbi_bluesky.live.plot import ScorePlot
from pbi_bluesky.simulate import (
    PS_PMMA,
    apply_anomaly,
    expected_dark,
    nominal_state,
    render_frame,
)
from tests.live.docs import feed, run_docs


def test_score_plot_draws_every_scored_frame_and_flags_in_red(tiny_model, instrument,
                                                              tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    poni = tmp_path / "g.poni"
    instrument.write_poni(poni)
    plot = ScorePlot(stream=ANALYSIS_STREAM)
    scorer = LiveScorer(tiny_model, sinks=[plot], mask=instrument.mask,
                        dark=expected_dark(instrument), npt=instrument.npt, poni=poni)
    rng = np.random.default_rng(3)
    normal = render_frame(nominal_state(PS_PMMA, "50:50", rng), instrument, rng)
    bad = render_frame(apply_anomaly(nominal_state(PS_PMMA, "50:50", rng), "contamination",
                                     0.9, rng), instrument, rng)
    _, docs = run_docs({"composition": "50:50", "thickness_cm": 0.1, "sample": "s"},
                       [(normal.frame, normal.monitor, normal.transmission),
                        (bad.frame, bad.monitor, bad.transmission)])
    try:
        feed(scorer, docs)
        assert scorer.flush(60)
    finally:
        scorer.close()
    assert plot.frames_plotted == 2
    ax_scores, ax_curves = plot._fig.axes
    red = [c for c in ax_scores.collections if len(c.get_offsets())
           and tuple(np.round(c.get_facecolor()[0][:3], 2)) == (0.86, 0.08, 0.24)]
    assert len(red) == 1 and len(red[0].get_offsets()) == 1  # the contaminated frame
    assert len(ax_curves.lines) == 2
    assert plot.save(tmp_path / "live.png").stat().st_size > 1000
