// XLstmOnnx build script. Run through ./build.sh (Cake pinned in .config/dotnet-tools.json).
//   ./build.sh --target=Test          build everything and run the whole test suite
//   ./build.sh --target=Quickstart    the main job: export the shipped model (once, cached) and generate text on CPU

///////////////////////////////////////////////////////////////////////////////
// ARGUMENTS
///////////////////////////////////////////////////////////////////////////////

var target = Argument<string>("target", "Default");
var configuration = Argument<string>("configuration", "Release");
var testFilter = Argument<string>("filter", "");

///////////////////////////////////////////////////////////////////////////////
// GLOBAL VARIABLES
///////////////////////////////////////////////////////////////////////////////

var solution = File("./XLstmOnnx.sln");
var artifacts = Directory("./artifacts");
var testResults = artifacts + Directory("test-results");
var cliProject = File("./cli/XLstmOnnx.Cli/XLstmOnnx.Cli.csproj");
var shippedCheckpoint = Directory("./models/kjv-xlstm");
var shippedModel = artifacts + Directory("models/kjv-xlstm");
var prompt = Argument<string>("prompt", "And God said");
var msbuild = new DotNetMSBuildSettings { TreatAllWarningsAs = MSBuildTreatAllWarningsAs.Error };

///////////////////////////////////////////////////////////////////////////////
// PRIVATE TASKS
///////////////////////////////////////////////////////////////////////////////

Task("__Clean")
    .Does(() =>
{
    CleanDirectory(artifacts);
    DotNetClean(solution, new DotNetCleanSettings { Configuration = configuration });
});

Task("__Build")
    .Does(() =>
{
    DotNetBuild(solution, new DotNetBuildSettings { Configuration = configuration, MSBuildSettings = msbuild });
});

Task("__RunTests")
    .Does(() =>
{
    EnsureDirectoryExists(testResults);
    CleanDirectory(testResults);
    var settings = new DotNetTestSettings
    {
        Configuration = configuration,
        NoBuild = true,
        ResultsDirectory = testResults,
        Loggers = new[] { "trx;LogFileName=tests.trx", "console;verbosity=normal" },
        ToolTimeout = TimeSpan.FromMinutes(60),
    };
    if (!string.IsNullOrEmpty(testFilter)) settings.Filter = testFilter;
    Exception failure = null;
    try { DotNetTest(solution, settings); }
    catch (Exception e) { failure = e; }
    PrintTotals(testResults);
    if (failure != null) throw new Exception("Tests failed; see the failures above and artifacts/test-results/tests.trx.", failure);
});

Task("__Quickstart")
    .Does(() =>
{
    var cli = $"run --project {cliProject} -c {configuration} --no-build --";
    var manifest = shippedModel + File("xlstm_runtime.json");
    bool fresh = FileExists(manifest)
        && System.IO.File.GetLastWriteTimeUtc(manifest.Path.FullPath) > System.IO.File.GetLastWriteTimeUtc(shippedCheckpoint + File("model.safetensors"));
    if (fresh)
    {
        Information("Using the exported model in {0}.", shippedModel);
    }
    else
    {
        Information("Exporting {0} (an xLSTM trained with transformers, see models/kjv-xlstm/README.md) to ONNX ...", shippedCheckpoint);
        Run("dotnet", $"{cli} export --checkpoint {shippedCheckpoint} --output {shippedModel}");
    }
    Information("Generating on the CPU:");
    Run("dotnet", $"{cli} generate --model {shippedModel} --prompt \"{prompt}\" --max-new-tokens 80 --temperature 0.8 --top-p 0.9 --repetition-penalty 1.1 --seed 1");
});

///////////////////////////////////////////////////////////////////////////////
// PRIMARY TARGETS
///////////////////////////////////////////////////////////////////////////////

Task("Clean").Description("Removes build output and artifacts.").IsDependentOn("__Clean");
Task("Build").Description("Builds the solution (warnings are errors).").IsDependentOn("__Build");
Task("Test").Description("Builds and runs every test; prints 'N passed, N failed, N skipped'.").IsDependentOn("__Build").IsDependentOn("__RunTests");
Task("Quickstart").Description("Exports the shipped model once and generates a continuation on the CPU.").IsDependentOn("__Build").IsDependentOn("__Quickstart");
Task("Default").IsDependentOn("Test");

///////////////////////////////////////////////////////////////////////////////
// EXECUTION
///////////////////////////////////////////////////////////////////////////////

RunTarget(target);

///////////////////////////////////////////////////////////////////////////////
// HELPER FUNCTIONS
///////////////////////////////////////////////////////////////////////////////

void Run(string tool, string arguments)
{
    int code = StartProcess(tool, new ProcessSettings { Arguments = arguments });
    if (code != 0) throw new Exception($"'{tool} {arguments}' exited with {code}.");
}

// CI reads our own totals line, not dotnet test's summary: count the TRX outcomes of every test project.
void PrintTotals(ConvertableDirectoryPath dir)
{
    int passed = 0, failed = 0, skipped = 0;
    foreach (var trx in GetFiles($"{dir}/**/*.trx"))
    {
        var doc = System.Xml.Linq.XDocument.Load(trx.FullPath);
        foreach (var r in doc.Descendants().Where(e => e.Name.LocalName == "UnitTestResult"))
        {
            switch ((string)r.Attribute("outcome"))
            {
                case "Passed": passed++; break;
                case "NotExecuted": skipped++; break;
                default: failed++; break;
            }
        }
    }
    var line = $"{passed} passed, {failed} failed, {skipped} skipped";
    System.IO.File.WriteAllText(dir.Path.CombineWithFilePath("totals.txt").FullPath, line + "\n");
    Console.WriteLine();
    Console.WriteLine(line);
}
