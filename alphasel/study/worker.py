"""One run of a study, in its own process: ``python -m alphasel.study.worker STUDY RUN_ID``.

Each executor starts one of these per run, so each run's peak memory is its own and a crash
fails that run only; the error lands in the run's error.json. Its thread counts and GPUs come
in its environment (:func:`alphasel.study.runner.worker_environment`), which torch and the BLAS
libraries read as they load: nothing here needs to set them again."""

from __future__ import annotations

import sys

from alphasel.study.runner import die_with_parent, run_one


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m alphasel.study.worker STUDY_DIR RUN_ID", file=sys.stderr)
        return 2
    if argv is None:
        die_with_parent()
    try:
        run_one(args[0], args[1], own_process=argv is None)
    except Exception as err:  # recorded in error.json by run_one
        print(f"alphasel study: run {args[1]} failed: {type(err).__name__}: {err}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
