import sys

from dicom_backup_dagster.config.cli import main

sys.exit(main())
