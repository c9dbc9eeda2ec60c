return XLstmOnnx.Cli.CliApp.Run(args);
