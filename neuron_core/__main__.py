import sys

from neuron_core.cli import main

sys.exit(main())
