"""The file the ``tfx`` CLI loads: tfmoe's TFX pipeline (the code is :mod:`tfmoe.tfx.pipeline`).

    export TFMOE_HOME=$PWD/runs/tfx LOCAL_HOME=$PWD/runs/tfx/cli
    tfx pipeline create --engine local --pipeline_path pipelines/moe_pipeline.py
    tfx run create --engine local --pipeline_name tfmoe-sasrec

or directly, with flags (``python pipelines/moe_pipeline.py --help``):

    python pipelines/moe_pipeline.py --model fame --epochs 5 --hr-threshold 0.05

It needs ``pip install "tfmoe[tfx]"`` (Python 3.10, TF 2.16, TFX 1.16). The CLI runs this file as
``__main__`` with ``LocalDagRunner.run`` patched, so the pipeline is built and run exactly once, below.
"""

import sys

from tfmoe.tfx.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
