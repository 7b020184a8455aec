from byok_relay.cli import main

raise SystemExit(main())
