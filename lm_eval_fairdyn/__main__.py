from lm_eval_fairdyn.cli import main

raise SystemExit(main())
