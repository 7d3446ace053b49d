"""`nnfp train`, `nnfp model-summary` and `nnfp export`: a config trained into a run, its model
summarised, a run exported."""

import json
import sys
from pathlib import Path

from nnfp.cli.exit_codes import BAD_INPUT, OK

__all__ = ["cmd_export", "cmd_model_summary", "cmd_train"]


def cmd_train(args):
    from nnfp.config import load_config
    from nnfp.training import train

    config = load_config(args.config, args.overrides)
    _, _, summary = train(config, args.run_dir)
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}, indent=1))
    return OK


def cmd_model_summary(args):
    from nnfp.config import load_config
    from nnfp.training import build_model

    config = args.config
    if args.legacy_config is not None:
        if config is not None:
            print("error: give the config once, as --config", file=sys.stderr)
            return BAD_INPUT
        print("note: `nnfp model-summary CONFIG` is deprecated; use `nnfp model-summary --config CONFIG`", file=sys.stderr)
        config = args.legacy_config
    model = build_model(load_config(config, args.overrides))
    model.summary(expand_nested=True, line_length=110)
    print(f"params: {model.count_params()}")
    return OK


def cmd_export(args):
    from nnfp.config import load_config
    from nnfp.outputs import claim_output_dir

    if args.format == "savedmodel" and args.quantize is not None:
        raise ValueError(
            "--quantize applies to --format litert only (a SavedModel keeps the model's float32 "
            "weights); nothing was written"
        )
    run_dir = Path(args.run_dir)
    config_path = run_dir / "config.yaml"
    config = load_config(config_path) if config_path.exists() else None
    claim_output_dir(args.out_dir, "export", overwrite=args.overwrite, inputs=[run_dir])  # before loading
    if args.format == "litert":
        from nnfp.export import export_litert
        from nnfp.lite import LITERT_MODEL_FILE, LITERT_SPECTRUM_FILE, read_spec

        quantize = args.quantize or "none"
        out = export_litert(
            run_dir, args.out_dir, quantize=quantize, overwrite=args.overwrite, inputs=[run_dir], config=config
        )
        spec = read_spec(out)
        parity = spec["parity"]
        size = (out / LITERT_MODEL_FILE).stat().st_size
        print(
            f"exported {out} (LiteRT, {quantize}, {size / 1e6:.1f} MB; serve: waveforms (batch, "
            f"{spec['segment_samples']}) -> fingerprint (batch, {spec['embedding_dim']}); against the Keras "
            f"model on {parity['segments']} segments: cosine min {parity['cosine_min']:.7f}, mean "
            f"{parity['cosine_mean']:.7f}, {100 * parity['own_neighbour']:.1f} % own-nearest-neighbour)"
        )
        spectrum = spec["spectrum"]["parity"]
        print(
            f"  and {LITERT_SPECTRUM_FILE}: the same model from the STFT power on, which nnfp runs with the "
            f"STFT in NumPy (cosine min {spectrum['cosine_min']:.7f}); a phone needs only {LITERT_MODEL_FILE}"
        )
        return OK
    from nnfp.export import export_saved_model, load_fingerprinter, resolve_model_path

    already = f"{run_dir}: already an exported model; export needs a run directory or .keras file"
    if not resolve_model_path(run_dir).is_file():  # a SavedModel or LiteRT folder: never loaded here
        raise ValueError(already)
    embedder = load_fingerprinter(run_dir)
    if not hasattr(embedder, "model"):
        raise ValueError(already)
    out = export_saved_model(embedder.model, args.out_dir, config, overwrite=args.overwrite, inputs=[run_dir])
    print(f"exported {out} (serving_default: waveforms (batch, {embedder.segment_samples}) -> fingerprint)")
    return OK

