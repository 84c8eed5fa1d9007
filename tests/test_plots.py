"""The comparison pipeline and every figure, on a folder of small synthetic result files.

The fixtures are result.json files written by hand: these tests check what is drawn
(panels, axes, labels, colours), not what training measures. No torch, no torchrun."""

import json

import matplotlib
import matplotlib.pyplot
import pytest

matplotlib.use("Agg")

from labkit.report import diagrams, frames, plots, selection, sentences  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    matplotlib.pyplot.close("all")


def fake_result(name, method, world_size, throughput, *, strategy=None, steps=6, fault=None, status="ok",
                sync_s=0.05, exposed_s=0.08, mb=60.0, calls=4, device="cpu", cpu_count=2, gpus=(), profile="cpu"):
    """A result.json as the worker writes it, with the fields the figures read."""
    t0 = 1000.0
    timeline = [{"rank": rank, "step": step, "phase": phase, "start": t0 + step + a, "end": t0 + step + b}
                for rank in range(world_size) for step in range(2)
                for phase, a, b in (("data_s", 0, 0.1), ("compute_s", 0.1, 0.6), ("sync_s", 0.6, 0.8),
                                    ("optimizer_s", 0.8, 0.9))] if world_size > 1 else []
    return {
        "schema": 1, "name": name, "strategy": strategy or method.split()[0], "method": method, "status": status,
        "world_size": world_size, "global_batch": 64, "device": device,
        "env": {"cpu_count": cpu_count, "gpus": list(gpus)},
        "config": {"profile": profile, "model": "resnet18_small", "fault": fault},
        "summary": {"throughput_img_s": throughput, "total_time_s": steps / 2, "step_time_median_s": 0.6,
                    "compute_only_step_s": 0.5, "exposed_comm_s": exposed_s, "sync_time_median_s": sync_s,
                    "sync_share_pct": 100 * sync_s / 0.6, "exposed_comm_pct": 100 * exposed_s / 0.58,
                    "bytes_sent_per_step": mb * 1e6, "collectives_per_step": calls,
                    "final_train_loss": 1.5, "best_val_top1": 40.0},
        "epochs": [{"epoch": e, "train_loss": 2.0 - e / 4, "val_top1": 20.0 + 10 * e} for e in (1, 2)],
        "steps": [{"step": i + 1, "loss": 2.3 - 0.1 * i} for i in range(steps)],
        "timeline": timeline,
    }


@pytest.fixture
def results_folder(tmp_path):
    """results/runs with repeats, a tiny communicator, a short check, a fault demo, a failed
    run, and one method at three world sizes."""
    runs = [fake_result("a1", "alpha", 4, 80.0), fake_result("a2", "alpha", 4, 90.0),
            fake_result("b1", "beta fp16", 4, 70.0, sync_s=0.002, exposed_s=0.03, mb=0.28, calls=1),
            fake_result("c1", "gamma", 4, 60.0, sync_s=0.3, exposed_s=0.31, mb=180.0, calls=62),
            fake_result("solo", "solo", 1, 50.0, sync_s=0.0, exposed_s=0.0, mb=0.0, calls=0),
            fake_result("a-short", "alpha", 4, 30.0, steps=2),
            fake_result("a-fault", "alpha", 4, 10.0, fault="1:3:kill"),
            fake_result("a-failed", "alpha", 4, 10.0, status="failed"),
            fake_result("a-2", "alpha", 2, 70.0), fake_result("a-1", "alpha", 1, 50.0)]
    for r in runs:
        (tmp_path / "runs" / r["name"]).mkdir(parents=True)
        (tmp_path / "runs" / r["name"] / "result.json").write_text(json.dumps(r))
    return tmp_path / "runs"


@pytest.fixture
def kept(results_folder):
    return selection.select_runs(selection.load_results([results_folder])).kept


def texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_selection_says_why_each_run_is_left_out(results_folder):
    chosen = selection.select_runs(selection.load_results([results_folder]))
    reasons = {r["name"]: why for r, why in chosen.left_out}
    assert set(reasons) == {"a-short", "a-fault", "a-failed"}
    assert "fault" in reasons["a-fault"] and "failed" in reasons["a-failed"] and "6-step" in reasons["a-short"]
    assert selection.select_runs(selection.load_results([results_folder]), profile="imagenet").kept == []


def test_method_label_comes_from_the_result():
    assert selection.method({"strategy": "x", "method": "x fp16"}) == "x fp16"
    assert selection.method({"strategy": "x"}) == "x"


def test_comparison_table_has_repeats_spread_and_baseline(kept):
    table = frames.comparison_table(frames.runs_frame(kept), baseline="alpha").set_index(["method", "world_size"])
    # of 80 and 90 the lower middle one: a figure a run made, never the midpoint 85 that none made
    assert table.loc[("alpha", 4), "repeats"] == 2 and table.loc[("alpha", 4), "throughput_img_s"] == 80.0
    assert table.loc[("alpha", 4), "throughput_sd"] == pytest.approx(7.0711, rel=1e-4)
    assert table.loc[("gamma", 4), "vs_baseline"] == pytest.approx(60 / 80)


def test_scaling_is_bounded_by_the_cores(kept):
    scaling = frames.scaling_frame(frames.runs_frame(kept)).set_index(["method", "world_size"])
    # 2 cores: from 1 rank at 50 img/s the bound is 100 at 2 ranks and still 100 at 4
    assert scaling.loc[("alpha", 2), "hardware_bound_img_s"] == 100
    assert scaling.loc[("alpha", 4), "hardware_bound_img_s"] == 100
    assert scaling.loc[("alpha", 4), "scaling_efficiency"] == pytest.approx(0.85)


def test_scaling_is_linear_up_to_the_gpus():
    runs = frames.runs_frame([fake_result(f"g{n}", "alpha", n, 100.0 * n, device="cuda:0", gpus=["H100"] * 4)
                                for n in (1, 2, 4)])
    scaling = frames.scaling_frame(runs)
    assert list(scaling.hardware_bound_img_s) == [100, 200, 400] and list(scaling.scaling_efficiency) == [1, 1, 1]


def test_report_lists_left_out_runs_and_calls_small_gaps_noise(results_folder):
    chosen = selection.select_runs(selection.load_results([results_folder]))
    report = sentences.report_text(chosen)
    assert "left out a-fault" in report and "Scaling against what the hardware allows" in report
    assert "the fastest is alpha" in report and "spread" in report


def test_the_pipeline_names_no_method_and_imports_no_torch():
    import inspect

    from labkit.report import costmodel

    for module in (selection, frames, sentences, costmodel):
        source = inspect.getsource(module)
        assert '"ddp"' not in source and "import torch" not in source, module.__name__


def test_throughput_has_error_bars_and_value_labels(kept):
    fig = plots.throughput(frames.runs_frame(kept))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "images / s" and "error bar" in ax.get_title()
    assert "6 steps × 64 img per run" in ax.get_title()  # the run length, marked
    # the bar is the median over repeats, the error bar its spread (these results hold no interval
    # of their own, so the spread runs from one repeat's throughput to the other's)
    assert any("80.0 [80.0–90.0] (n=2)" in t for t in texts(fig))
    assert ax.containers and any(c.has_xerr for c in ax.containers if hasattr(c, "has_xerr"))


def test_time_breakdown_stacks_three_parts_with_the_noise_floor(kept):
    for r in kept:
        r["summary"]["exposed_comm_noise_s"] = 0.004
    fig = plots.time_breakdown(kept)
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:3] == ["compute-only (calibration)", "exposed, not blocking", "blocking sync"]
    assert "± noise floor" in labels and "ms" in ax.get_xlabel()
    assert any(t.startswith("500 | 28.0 | 2.0") for t in texts(fig))  # the tiny sync bar is labelled


def test_time_breakdown_without_new_fields_shows_them_absent(kept):
    for r in kept:
        r["summary"].pop("compute_only_step_s"), r["summary"].pop("exposed_comm_s")
    fig = plots.time_breakdown(kept)
    assert any("exposed unknown" in t for t in texts(fig))


def test_communication_volume_is_log_scaled_and_labels_tiny_and_zero_bars(kept):
    fig = plots.communication_volume(frames.runs_frame(kept))
    assert len(fig.axes) == 2 and all(ax.get_xscale() == "log" for ax in fig.axes)
    assert "0.28 MB" in texts(fig) and "0 MB (none)" in texts(fig)


def test_loss_is_drawn_against_images_seen(kept):
    fig = plots.loss_vs_images(frames.steps_frame(kept))
    ax = fig.axes[0]
    assert "images seen" in ax.get_xlabel()
    assert max(line.get_xdata().max() for line in ax.lines) == 6 * 64


def test_scaling_figure_draws_the_hardware_bound_not_an_ideal_line(kept):
    fig = plots.scaling(frames.runs_frame(kept))
    ax = fig.axes[0]
    assert "hardware bound" in ax.get_legend_handles_labels()[1] and "2 devices" in texts(fig)
    assert max(max(line.get_ydata(), default=0) for line in ax.lines) <= 100


def test_timelines_share_one_axis_and_have_a_communication_lane(kept):
    fig = plots.timelines([r for r in kept if r["world_size"] == 4][:2])
    assert len(fig.axes) == 2 and fig.axes[0].get_shared_x_axes().joined(fig.axes[0], fig.axes[1])
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "rank 0 comm" in ticks and "rank 3 compute" in ticks


def test_bandwidth_plot_is_log_log_with_the_fitted_line():
    rows = [{"op": "all_reduce", "size_bytes": s, "time_s": 1e-4 + 1e-9 * s, "algbw_gb_s": s / (1e-4 + 1e-9 * s) / 1e9,
             "busbw_gb_s": 1.5 * s / (1e-4 + 1e-9 * s) / 1e9} for s in (1e3, 1e5, 1e7)]
    fig = plots.bandwidth({"rows": rows, "fits": {"all_reduce": {"alpha_s": 1e-4, "beta_s_per_byte": 1e-9}},
                           "world_size": 4, "backend": "gloo"})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = ax.get_legend_handles_labels()[1]
    assert "all_reduce measured" in labels and any(label.startswith("all_reduce fit") for label in labels)
    fitted = next(line for line in ax.lines if line.get_label().startswith("all_reduce fit"))
    assert fitted.get_ydata()[-1] == pytest.approx(1.5 * 1e7 / (1e-4 + 1e-2) / 1e9)
    assert "α=100 µs, β=1.00 ns/B" in fitted.get_label() and "busbw = algbw" in ax.get_title()
    run = fake_result("a", "alpha", 4, 80.0)
    run["steps"] = [{**step, "ops": {"all_reduce": [4, 4e6]}} for step in run["steps"]]  # 1 MB a call
    marked = plots.bandwidth({"rows": rows, "fits": {}, "world_size": 4, "backend": "gloo"}, [run]).axes[0]
    line = next(line for line in marked.lines if line.get_label() == "alpha")
    assert line.get_xdata()[0] == pytest.approx(1e6)


def test_a_method_keeps_its_colour_in_every_figure(kept):
    runs = frames.runs_frame(kept)
    bar = plots.throughput(runs).axes[0]
    line = plots.loss_vs_images(frames.steps_frame(kept)).axes[0]
    bar_colour = {t.get_text(): p.get_facecolor()[:3] for t, p in zip(bar.get_yticklabels(), bar.patches)}
    line_colour = {ln.get_label(): matplotlib.colors.to_rgb(ln.get_color()) for ln in line.lines}
    assert bar_colour["gamma ×4"] == pytest.approx(line_colour["gamma training"])


def test_every_registered_method_has_its_own_colour():
    """Issue 32: diloco and ssp were both orange in one plot, ring grey in 05 and pink in 06."""
    from labkit.strategies import REGISTRY

    colours = {name: plots.color_of(name) for name in REGISTRY}
    assert len(set(colours.values())) == len(REGISTRY)  # one colour per method
    assert not set(colours.values()) & set(plots.OTHER_PALETTE)  # a student's method never takes one of theirs
    # a variant keeps its method's hue, in another shade: told apart from the method itself
    for variant, base in (("bucketed fp16", "bucketed"), ("ssp (s=2)", "ssp"), ("ps (dedicated server)", "ps")):
        assert plots.base_method(variant) == base and plots.color_of(variant) not in colours.values()


def _drawn_colours(fig) -> list[tuple[str, tuple]]:
    """(method, colour) of every bar (each bar layer, by its tick label), every labelled line and
    every labelled error-bar series of a figure."""
    from matplotlib.container import BarContainer, ErrorbarContainer

    found = []
    for ax in fig.axes:
        ticks = [t.get_text().split(" ×")[0] for t in ax.get_yticklabels()]
        for container in ax.containers:
            if isinstance(container, BarContainer) and len(container) == len(ticks) > 0:
                found += [(t, p.get_facecolor()[:3]) for t, p in zip(ticks, container)]
            elif isinstance(container, ErrorbarContainer) and not container.get_label().startswith("_"):
                found.append((container.get_label(), matplotlib.colors.to_rgb(container.lines[0].get_color())))
        for line in ax.lines:
            label = line.get_label().removesuffix(" training").removesuffix(" validation")
            if not label.startswith(("_", "chance")):
                found.append((label, matplotlib.colors.to_rgb(line.get_color())))
    return found


def test_a_figure_colours_methods_by_name_not_by_order(tmp_path):
    """Every figure of a comparison, drawn from runs in one order and from a subset in another:
    each method has color_of(its name) in both."""
    names = ["ring", "ps", "ddp", "single"]
    runs = [fake_result(f"{m}{k}", m, 1 if m == "single" else 4, 50.0 + 10 * i + k) for k in (1, 2, 3)
            for i, m in enumerate(names)]
    for r in runs:
        r["epochs"] = [{**e, "val_images": 300, "val_loss": 2.0} for e in r["epochs"]]
    first = plots.all_figures(runs)
    second = plots.all_figures([r for r in reversed(runs) if r["method"] != "ring"])
    for figures, methods in ((first, set(names)), (second, set(names) - {"ring"})):
        for name in plots.FIVE + ("time_breakdown",):
            drawn = _drawn_colours(figures[name])
            assert {label for label, _ in drawn} == methods, name  # every method of every figure was checked
            for label, colour in drawn:
                assert colour == pytest.approx(matplotlib.colors.to_rgb(plots.color_of(label))), (name, label)


def test_all_figures_and_save(kept, tmp_path):
    figures = plots.all_figures(kept)
    assert {*plots.FIVE, "time_breakdown", "communication_volume", "scaling", "timelines"} <= set(figures)
    assert all(p.exists() for p in plots.save_all(figures, tmp_path / "plots"))


def test_the_all_reduce_diagram_is_a_ring():
    fig = diagrams.draw_pattern("all-reduce", ranks=4)
    arrows = [t for t in fig.axes[0].texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == 4  # one arrow per rank, to its right neighbour: not a full mesh (12)
    assert "ring" in fig.axes[0].get_title()


def test_sentences_are_built_from_the_result():
    full, short = fake_result("f", "alpha", 4, 80.0), fake_result("s", "alpha", 4, 80.0)
    short["config"]["max_steps"] = 6
    assert "best validation top-1 40.0 %" in sentences.describe(full) and "80.0 img/s" in sentences.describe(full)
    assert "top-1" not in sentences.describe(short) and "short run" in sentences.describe(short)
    noisy = fake_result("n", "solo", 1, 50.0, exposed_s=-0.02)
    assert "no cost of communication is measurable" in sentences.describe(noisy)


def test_parameter_distance_to_the_reference_run_of_the_same_setup(tmp_path):
    import torch

    from labkit.report.distance import distance_sentence, relative_distance

    runs = []
    for name, method, shift in (("ref", "ddp", 0.0), ("mine", "manual", 1e-3), ("other", "ddp", 5.0)):
        r = fake_result(name, method, 4, 80.0)
        r["config"]["lr"] = 0.5 if name == "other" else 0.1  # another setup: never the reference
        r["path"] = str(tmp_path / name)
        (tmp_path / name).mkdir()
        model = {"w": torch.tensor([2.0, -4.0]) + shift, "bn.running_mean": torch.tensor([100.0 * shift])}
        torch.save({"model": model}, tmp_path / name / "checkpoint.pt")
        runs.append(r)
    assert relative_distance(tmp_path / "mine", tmp_path / "ref") == pytest.approx(1e-3 / 4, rel=1e-4)  # buffers left out
    assert "2.5e-04" in distance_sentence(runs[1], runs, "ddp") and "(ref)" in distance_sentence(runs[1], runs, "ddp")
    assert "No ring run" in distance_sentence(runs[1], runs, "ring")


def test_short_demonstration_runs_draw_no_accuracy(kept):
    for r in kept:
        r["config"]["max_steps"] = 6
    accuracy = plots.all_figures(kept)["accuracy"].axes[0]
    assert not accuracy.containers and not accuracy.lines  # nothing drawn, and the figure says why
    assert "accuracy after a few max_steps steps says nothing" in accuracy.texts[0].get_text()


def test_accuracy_has_binomial_error_bars_for_the_validation_size(kept):
    """± 100·√(p(1−p)/N) around each epoch's top-1, N = the run's val_images; a run that did not
    record N (an older result) gets no bar rather than an empty one."""
    for r in kept:
        for e in r["epochs"]:
            e["val_images"] = 300
    kept[-1]["epochs"] = [{k: v for k, v in e.items() if k != "val_images"} for e in kept[-1]["epochs"]]
    ax = plots.validation_accuracy(frames.epochs_frame(kept)).axes[0]
    assert "300 images" in ax.get_title() and "√(p(1−p)/N)" in ax.get_title()
    first = next(c for c in ax.containers if c.has_yerr)
    low, high = first.lines[2][0].get_segments()[0][:, 1]  # the first run's epoch 1: 30 %
    assert (high - low) / 2 == pytest.approx(100 * (0.3 * 0.7 / 300) ** 0.5)  # 2.65 points
    assert sum(c.has_yerr for c in ax.containers) == len(kept) - 1  # every run but the one without N


def test_the_loss_plot_has_the_chance_line(kept):
    ax = plots.loss_vs_images(frames.steps_frame(kept), classes=10).axes[0]
    chance = next(line for line in ax.lines if line.get_label().startswith("chance"))
    assert chance.get_ydata()[0] == pytest.approx(2.302585) and "ln 10 = 2.30" in chance.get_label()


def test_every_figure_lists_the_methods_in_one_order(kept):
    """The throughput figure's order (fastest on top) in the time breakdown and the volume too."""
    runs = frames.runs_frame(kept)
    order = [t.get_text() for t in plots.throughput(runs).axes[0].get_yticklabels()]
    breakdown = [t.get_text() for t in plots.time_breakdown(kept).axes[0].get_yticklabels()]
    volume = [t.get_text() for t in plots.communication_volume(runs).axes[0].get_yticklabels()]
    assert order == breakdown == volume and order[-1] == "alpha ×4"  # alpha (80 img/s) on top


def test_the_timeline_names_the_straggler(kept):
    run = next(r for r in kept if r["world_size"] == 4)
    for event in run["timeline"]:  # rank 2's backward ends 0.2 s late in both steps
        if event["rank"] == 2 and event["phase"] == "compute_s":
            event["end"] += 0.2
    title = plots.timelines([run]).axes[0].get_title(loc="left")
    assert "straggler: rank 2 finished compute last in 2 of 2 steps" in title
    run["timeline"] = [e for e in run["timeline"] if e["step"] == 0 or e["rank"] != 2]  # step 1: rank 3 last
    for event in run["timeline"]:
        if event["step"] == 1 and event["rank"] == 3 and event["phase"] == "compute_s":
            event["end"] += 0.5
    assert "no steady straggler" in plots.timelines([run]).axes[0].get_title(loc="left")


def test_the_five_plots_are_drawn_from_a_small_set_of_results(kept, tmp_path):
    """The original project's five: throughput, total time, loss (training and validation, the
    chance line), communication overhead (% of the step, its noise floor), accuracy (top-1 per
    epoch, binomial bars)."""
    for r in kept:
        r["config"]["num_classes"] = 10
        r["summary"]["exposed_comm_noise_s"] = 0.01
        r["epochs"] = [{**e, "steps": 3, "val_loss": 2.0 - e["epoch"] / 4, "val_images": 300} for e in r["epochs"]]
    figures = plots.all_figures(kept)
    paths = plots.save_all({name: figures[name] for name in plots.FIVE}, tmp_path / "plots")
    assert sorted(p.name for p in paths) == sorted(f"{name}.png" for name in plots.FIVE)
    assert all(p.stat().st_size > 1000 for p in paths)
    total = figures["total_time"].axes[0]
    assert total.get_xlabel() == "seconds" and any("3.0 s" in t for t in texts(figures["total_time"]))
    loss = figures["loss"].axes[0]
    labels = loss.get_legend_handles_labels()[1]
    assert "alpha training" in labels and "alpha validation" in labels and any(l.startswith("chance") for l in labels)
    validation = next(line for line in loss.lines if line.get_label() == "alpha validation")
    assert list(validation.get_xdata()) == [3 * 64, 6 * 64] and list(validation.get_ydata()) == [1.75, 1.5]
    overhead = texts(figures["communication_overhead"])
    # gamma: exposed 0.31 s of 0.81 (compute-only 0.5 + exposed): 53.4 %, floor 0.01 / 0.81 = 1.2 %
    assert any(t.startswith("53.4 % ± 1.2") for t in overhead)
    assert any("within the noise" in t for t in overhead)  # solo: 0 % ± 2 %
    accuracy = figures["accuracy"].axes[0]
    assert "binomial" in accuracy.get_title() and any(c.has_yerr for c in accuracy.containers)
    matplotlib.pyplot.close("all")
    for r in kept:
        r["config"]["max_steps"] = 6
    empty = plots.all_figures(kept)["accuracy"]  # short runs only: the figure says why it is empty
    assert "No run here trained whole epochs" in texts(empty)[0]
    trained = [{**kept[0], "name": "long", "config": {**kept[0]["config"], "max_steps": 0}}]
    assert any(c.has_yerr for c in plots.all_figures(kept, trained)["accuracy"].axes[0].containers)
