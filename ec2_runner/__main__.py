import sys

from ec2_runner.main import main

sys.exit(main())
