// XLstmOnnx build script. Run through ./build.sh (Cake pinned in .config/dotnet-tools.json).
//   ./build.sh --target=Test          build everything, run the whole test suite and the sample (samples/)
//   ./build.sh --target=Quickstart    the main job: export the shipped model (once, cached) and generate text on CPU
//   ./build.sh --target=Pack          the NuGet packages and the xlstm-onnx dotnet tool, in artifacts/packages

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
var sampleProject = File("./samples/XLstmOnnx.Sample/XLstmOnnx.Sample.csproj");
var shippedCheckpoint = Directory("./models/kjv-xlstm");
var shippedModel = artifacts + Directory("models/kjv-xlstm");
var prompt = Argument<string>("prompt", "And God said");
var msbuild = new DotNetMSBuildSettings { TreatAllWarningsAs = MSBuildTreatAllWarningsAs.Error };
var customOps = Directory("./customops");
var customOpsBuild = customOps + Directory("build");
var customOpsLibrary = customOpsBuild + File("libxlstm_customops.so");
var packages = artifacts + Directory("packages");

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
    // customops/ first (CTest runs the GoogleTest executables, each writing its results to gtest/<name>.xml), unless
    // a filter picks .NET tests; CUDA tests need a GPU: tools/bench/run_gpu.sh
    if (string.IsNullOrEmpty(testFilter))
    {
        var gtest = testResults + Directory("gtest");
        EnsureDirectoryExists(gtest);
        int code = StartProcess("ctest", new ProcessSettings
        {
            Arguments = $"--test-dir {customOpsBuild} --output-on-failure -LE gpu",
            EnvironmentVariables = new Dictionary<string, string> { ["GTEST_OUTPUT"] = $"xml:{MakeAbsolute(gtest)}/" },
        });
        if (code != 0) failure = new Exception($"ctest exited with {code}.");
    }
    try { DotNetTest(solution, settings); }
    catch (Exception e) { failure ??= e; }
    PrintTotals(testResults);
    if (failure != null) throw new Exception("Tests failed; see the failures above, artifacts/test-results/tests.trx and artifacts/test-results/gtest/.", failure);
});

Task("__BuildCustomOps")
    .Description("Configures and builds customops/ (CMake): libxlstm_customops.so, CPU kernels (and CUDA kernels where a toolkit is found), and their GoogleTest executables.")
    .Does(() =>
{
    // the ONNX Runtime headers come from the restored NuGet package (__Build restores it)
    Run("cmake", $"-S {customOps} -B {customOpsBuild} -DCMAKE_BUILD_TYPE=Release \"-DORT_INCLUDE_DIR={OrtIncludeDir()}\"");
    Run("cmake", $"--build {customOpsBuild} --parallel {System.Environment.ProcessorCount}");
});

Task("__StageCustomOps")
    .Description("Copies libxlstm_customops.so beside the runtime, CLI and test outputs, where CustomOpLibrary looks for it.")
    .Does(() =>
{
    foreach (var pattern in new[] { "runtime", "cli", "tests" })
    {
        foreach (var dir in GetDirectories($"./{pattern}/*/bin/{configuration}/net*"))
        {
            CopyFileToDirectory(customOpsLibrary, dir);
        }
    }
});

Task("__Pack")
    .Description("Packs the built solution: XLstmOnnx.Contract, XLstmOnnx.GraphBuilder, XLstmOnnx.Runtime (+ symbols) and the xlstm-onnx tool, which carries libxlstm_customops.so.")
    .Does(() =>
{
    CleanDirectory(packages);
    DotNetPack(solution, new DotNetPackSettings { Configuration = configuration, NoBuild = true, OutputDirectory = packages, MSBuildSettings = msbuild });
    Information("Install the tool from there: dotnet tool install --global --add-source {0} xlstm-onnx", packages);
});

Task("__ExportShippedModel")
    .Description("Exports models/kjv-xlstm to artifacts/models/kjv-xlstm, unless the export there is newer than the checkpoint.")
    .Does(() =>
{
    var manifest = shippedModel + File("xlstm_runtime.json");
    // stale when older than the checkpoint or than the exporter that would write it now (its graphs and sampler change)
    var exporter = File($"./graphbuilder/XLstmOnnx.GraphBuilder/bin/{configuration}/net10.0/XLstmOnnx.GraphBuilder.dll");
    bool fresh = FileExists(manifest)
        && System.IO.File.GetLastWriteTimeUtc(manifest.Path.FullPath) > System.IO.File.GetLastWriteTimeUtc(shippedCheckpoint + File("model.safetensors"))
        && (!FileExists(exporter) || System.IO.File.GetLastWriteTimeUtc(manifest.Path.FullPath) > System.IO.File.GetLastWriteTimeUtc(exporter.Path.FullPath));
    if (fresh)
    {
        Information("Using the exported model in {0}.", shippedModel);
        return;
    }
    Information("Exporting {0} (an xLSTM trained with transformers, see models/kjv-xlstm/README.md) to ONNX ...", shippedCheckpoint);
    Run("dotnet", $"run --project {cliProject} -c {configuration} --no-build -- export --checkpoint {shippedCheckpoint} --output {shippedModel}");
});

Task("__Quickstart")
    .Does(() =>
{
    Information("Generating on the CPU:");
    Run("dotnet", $"run --project {cliProject} -c {configuration} --no-build -- generate --model {shippedModel} --prompt \"{prompt}\" --max-new-tokens 80 --temperature 0.8 --top-p 0.9 --repetition-penalty 1.1 --seed 1");
});

Task("__RunSample")
    .Description("Runs samples/XLstmOnnx.Sample (the library used from .NET) against the shipped model's export; fails when it does.")
    .Does(() =>
{
    Run("dotnet", $"run --project {sampleProject} -c {configuration} --no-build -- {shippedModel}");
});

///////////////////////////////////////////////////////////////////////////////
// PRIMARY TARGETS
///////////////////////////////////////////////////////////////////////////////

Task("Clean").Description("Removes build output and artifacts.").IsDependentOn("__Clean");
Task("Build").Description("Builds the solution (warnings are errors) and the custom-op library (customops/).")
    .IsDependentOn("__Build").IsDependentOn("__BuildCustomOps").IsDependentOn("__StageCustomOps");
Task("Test").Description("Builds and runs every test (prints 'N passed, N failed, N skipped'), then runs the sample against the shipped model.")
    .IsDependentOn("__Build").IsDependentOn("__BuildCustomOps").IsDependentOn("__StageCustomOps").IsDependentOn("__RunTests")
    .IsDependentOn("__ExportShippedModel").IsDependentOn("__RunSample");
Task("Pack").Description("Builds, then packs the three libraries and the xlstm-onnx dotnet tool into artifacts/packages.")
    .IsDependentOn("__Build").IsDependentOn("__BuildCustomOps").IsDependentOn("__StageCustomOps").IsDependentOn("__Pack");
Task("Quickstart").Description("Exports the shipped model once and generates a continuation on the CPU.")
    .IsDependentOn("__Build").IsDependentOn("__ExportShippedModel").IsDependentOn("__Quickstart");
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
    // GoogleTest's XML (customops/, through CTest): a <testcase> with a <failure> failed; result "skipped" (GTEST_SKIP)
    // or status "notrun" (DISABLED_) did not run
    var gtestFiles = GetFiles($"{dir}/gtest/*.xml");
    foreach (var xml in gtestFiles)
    {
        var doc = System.Xml.Linq.XDocument.Load(xml.FullPath);
        foreach (var t in doc.Descendants().Where(e => e.Name.LocalName == "testcase"))
        {
            if (t.Elements().Any(e => e.Name.LocalName == "failure")) failed++;
            else if ((string)t.Attribute("result") == "skipped" || (string)t.Attribute("status") == "notrun") skipped++;
            else passed++;
        }
    }
    // no XML at all (the executable died first): one failure on the line too, beside ctest's exit code
    if (string.IsNullOrEmpty(testFilter) && !gtestFiles.Any())
    {
        Warning("customops/: no GoogleTest results in {0}/gtest", dir);
        failed++;
    }
    var line = $"{passed} passed, {failed} failed, {skipped} skipped";
    System.IO.File.WriteAllText(dir.Path.CombineWithFilePath("totals.txt").FullPath, line + "\n");
    Console.WriteLine();
    Console.WriteLine(line);
}

// The C/C++ headers of the ONNX Runtime package the solution references (Directory.Packages.props), from the NuGet
// cache (NUGET_PACKAGES or ~/.nuget/packages): customops/ compiles against exactly the runtime the .NET side loads.
string OrtIncludeDir()
{
    var props = System.Xml.Linq.XDocument.Load("Directory.Packages.props");
    var version = props.Descendants("PackageVersion")
        .First(e => (string)e.Attribute("Include") == "Microsoft.ML.OnnxRuntime.Gpu.Linux").Attribute("Version").Value;
    var nuget = EnvironmentVariable("NUGET_PACKAGES")
        ?? System.IO.Path.Combine(EnvironmentVariable("HOME") ?? "", ".nuget", "packages");
    var dir = System.IO.Path.Combine(nuget, "microsoft.ml.onnxruntime.gpu.linux", version, "buildTransitive", "native", "include");
    if (!System.IO.File.Exists(System.IO.Path.Combine(dir, "onnxruntime_lite_custom_op.h")))
    {
        throw new Exception($"ONNX Runtime {version} headers not found in {dir}; restore the solution first (dotnet restore XLstmOnnx.sln).");
    }
    return dir;
}
