using System.Diagnostics;
using System.IO.Compression;
using System.Reflection;
using System.Xml.Linq;
using XLstmOnnx.Cli;

namespace XLstmOnnx.Tests;

/// <summary>
/// The NuGet packages of this build: <c>dotnet pack --no-build</c> into a local folder, what each package declares, and
/// the dotnet tool installed from that folder into a fresh tool path and run, as a user would.
/// </summary>
[TestFixture]
[NonParallelizable]
public class PackageTests
{
#if DEBUG
    private const string Configuration = "Debug";
#else
    private const string Configuration = "Release";
#endif

    private TempDir _tmp = null!;
    private string _feed = "";
    private string _version = "";
    private string _informationalVersion = "";

    [OneTimeSetUp]
    public void Pack()
    {
        _informationalVersion = typeof(CliApp).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()!.InformationalVersion;
        _version = _informationalVersion.Split('+')[0];
        _tmp = TestPaths.Temp();
        _feed = _tmp.Sub("feed");
        var pack = Dotnet(TestPaths.RepoRoot, TimeSpan.FromMinutes(10),
            "pack", Path.Combine(TestPaths.RepoRoot, "XLstmOnnx.sln"), "-c", Configuration, "--no-build", "-o", _feed, "-nodeReuse:false", "--disable-build-servers");
        Assert.That(pack.Code, Is.Zero, $"dotnet pack failed:\n{pack.Output}");
    }

    [OneTimeTearDown]
    public void Clean() => _tmp.Dispose();

    private string Package(string id, string extension = "nupkg")
    {
        string path = Path.Combine(_feed, $"{id}.{_version}.{extension}");
        Assert.That(File.Exists(path), $"{Path.GetFileName(path)} was not packed; the feed has {string.Join(", ", Directory.GetFiles(_feed).Select(Path.GetFileName))}");
        return path;
    }

    private static XElement Nuspec(ZipArchive zip)
    {
        var entry = zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal) && !e.FullName.Contains('/'));
        using var s = entry.Open();
        return XDocument.Load(s).Root!.Elements().Single(e => e.Name.LocalName == "metadata");
    }

    private static string? Field(XElement metadata, string name) => metadata.Elements().FirstOrDefault(e => e.Name.LocalName == name)?.Value;

    [TestCase("XLstmOnnx.Contract")]
    [TestCase("XLstmOnnx.GraphBuilder")]
    [TestCase("XLstmOnnx.Runtime")]
    public void ALibraryPackageDeclaresWhatItIs(string id)
    {
        using var zip = ZipFile.OpenRead(Package(id));
        var m = Nuspec(zip);
        var files = zip.Entries.Select(e => e.FullName).ToHashSet();
        Assert.Multiple(() =>
        {
            Assert.That(Field(m, "id"), Is.EqualTo(id));
            Assert.That(Field(m, "version"), Is.EqualTo(_version));
            Assert.That(Field(m, "description"), Is.Not.Empty.And.Not.EqualTo("Package Description").And.Contains("xLSTM"));
            var license = m.Elements().Single(e => e.Name.LocalName == "license");
            Assert.That((license.Attribute("type")?.Value, license.Value), Is.EqualTo(("expression", "MIT")));
            Assert.That(Field(m, "readme"), Is.EqualTo("README.md"));
            Assert.That(files, Does.Contain("README.md"));
            Assert.That(Field(m, "tags")!.Split(' '), Does.Contain("xlstm").And.Contain("onnx"));
            Assert.That(Field(m, "authors"), Is.Not.Empty);
            Assert.That(files, Does.Contain($"lib/net10.0/{id}.dll").And.Contain($"lib/net10.0/{id}.xml"), "the XML docs travel with the library");
        });
        using var symbols = ZipFile.OpenRead(Package(id, "snupkg"));
        Assert.That(symbols.Entries.Select(e => e.FullName), Does.Contain($"lib/net10.0/{id}.pdb"));
    }

    [Test]
    public void TheRuntimeDependsOnTheManagedOnnxRuntimeOnly()
    {
        using var zip = ZipFile.OpenRead(Package("XLstmOnnx.Runtime"));
        var dependencies = Nuspec(zip).Descendants().Where(e => e.Name.LocalName == "dependency")
            .ToDictionary(e => e.Attribute("id")!.Value, e => e.Attribute("version")!.Value);
        Assert.That(dependencies, Does.ContainKey("Microsoft.ML.OnnxRuntime.Managed"));
        Assert.That(dependencies["Microsoft.ML.OnnxRuntime.Managed"], Does.StartWith("1.31."));
        Assert.That(dependencies.Keys.Where(k => k.StartsWith("Microsoft.ML.OnnxRuntime", StringComparison.Ordinal) && k is not "Microsoft.ML.OnnxRuntime.Managed" and not "Microsoft.ML.OnnxRuntime.Extensions"),
            Is.Empty, "the application chooses the native runtime (CPU or GPU)");
        Assert.That(dependencies, Does.ContainKey("XLstmOnnx.Contract").WithValue(_version));
        Assert.That(dependencies.Keys, Does.Not.Contain("XLstmOnnx.GraphBuilder").And.Not.Contain("Google.Protobuf"), "the runtime needs the contract, not the exporter");
    }

    [Test]
    public void TheContractDependsOnNothing()
    {
        using var zip = ZipFile.OpenRead(Package("XLstmOnnx.Contract"));
        var dependencies = Nuspec(zip).Descendants().Where(e => e.Name.LocalName == "dependency").Select(e => e.Attribute("id")!.Value);
        Assert.That(dependencies, Is.Empty);
        using var exporter = ZipFile.OpenRead(Package("XLstmOnnx.GraphBuilder"));
        var exporterDependencies = Nuspec(exporter).Descendants().Where(e => e.Name.LocalName == "dependency").ToDictionary(e => e.Attribute("id")!.Value, e => e.Attribute("version")!.Value);
        Assert.That(exporterDependencies, Does.ContainKey("XLstmOnnx.Contract").WithValue(_version));
    }

    [Test]
    public void TheToolPackageCarriesTheLinuxNativesTheCustomOpsAndThePresets()
    {
        using var zip = ZipFile.OpenRead(Package("xlstm-onnx"));
        var m = Nuspec(zip);
        var files = zip.Entries.Select(e => e.FullName).ToList();
        const string Tool = "tools/net10.0/any/";
        Assert.Multiple(() =>
        {
            Assert.That(m.Descendants().Where(e => e.Name.LocalName == "packageType").Select(e => e.Attribute("name")?.Value), Does.Contain("DotnetTool"));
            Assert.That((m.Elements().Single(e => e.Name.LocalName == "license").Value, Field(m, "readme")), Is.EqualTo(("MIT", "README.md")));
            Assert.That(files, Does.Contain(Tool + "xlstm-onnx.dll").And.Contain(Tool + "DotnetToolSettings.xml"));
            Assert.That(files, Does.Contain(Tool + "libxlstm_customops.so"), "beside the tool's dll, where CustomOpLibrary looks first");
            Assert.That(files, Does.Contain(Tool + "presets/xlstm-7b.json").And.Contain(Tool + "presets/xlstm-tiny.json"));
            Assert.That(files, Does.Contain(Tool + "runtimes/linux-x64/native/libonnxruntime.so"));
            Assert.That(files, Does.Contain(Tool + "runtimes/linux-x64/native/libonnxruntime_providers_cuda.so"), "the GPU runtime, as the CLI builds with");
            Assert.That(files.Where(f => f.Contains("/win-", StringComparison.Ordinal) && f.Contains("onnxruntime.dll", StringComparison.Ordinal)), Is.Empty,
                "Microsoft.ML.OnnxRuntime.Gpu.Linux: no Windows natives");
        });
        using var settings = zip.GetEntry(Tool + "DotnetToolSettings.xml")!.Open();
        var command = XDocument.Load(settings).Descendants().Single(e => e.Name.LocalName == "Command");
        Assert.That(command.Attribute("Name")?.Value, Is.EqualTo("xlstm-onnx"));
    }

    [Test]
    public void TheToolInstallsFromTheLocalFeedAndRuns()
    {
        // only the local folder as a source, and a NuGet cache of its own: nothing comes from elsewhere or from an earlier run
        string config = _tmp.Sub("nuget.config");
        File.WriteAllText(config, $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="local" value="{_feed}" />
              </packageSources>
            </configuration>
            """);
        string tools = _tmp.Sub("tools");
        var env = new Dictionary<string, string?> { ["NUGET_PACKAGES"] = _tmp.Sub("nuget-cache") };
        var install = Dotnet(_tmp.Path, TimeSpan.FromMinutes(5), env,
            "tool", "install", "--tool-path", tools, "--configfile", config, "--add-source", _feed, "xlstm-onnx", "--version", _version);
        Assert.That(install.Code, Is.Zero, install.Output);
        string exe = Path.Combine(tools, "xlstm-onnx");
        Assert.That(File.Exists(exe), $"{exe} after: {install.Output}");

        var version = Run(exe, _tmp.Path, TimeSpan.FromMinutes(1), new Dictionary<string, string?>(), "--version");
        Assert.That(version.Code, Is.Zero, version.Output);
        Assert.That(version.Output.Trim(), Is.EqualTo(_informationalVersion));

        // the installed tool finds its presets and its custom-op library (no XLSTM_CUSTOMOPS_PATH): export and run a custom-op model
        var noPath = new Dictionary<string, string?> { [Runtime.CustomOpLibrary.EnvironmentVariable] = null };
        var export = Run(exe, _tmp.Path, TimeSpan.FromMinutes(2), noPath,
            "export", "--random-weights", "--preset", "xlstm-tiny", "--num-blocks", "1", "--mlstm-kernels", "custom", "--output", _tmp.Sub("model"));
        Assert.That(export.Code, Is.Zero, export.Output);
        var inspect = Run(exe, _tmp.Path, TimeSpan.FromMinutes(2), noPath, "inspect", "--model", _tmp.Sub("model"), "--run", "4");
        Assert.That(inspect.Code, Is.Zero, inspect.Output);
        Assert.That(inspect.Output, Does.Contain("ran 4 tokens"));
    }

    private static (int Code, string Output) Dotnet(string dir, TimeSpan timeout, params string[] args) => Dotnet(dir, timeout, new Dictionary<string, string?>(), args);

    private static (int Code, string Output) Dotnet(string dir, TimeSpan timeout, IReadOnlyDictionary<string, string?> env, params string[] args)
    {
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";
        var all = new Dictionary<string, string?>(env) { ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1", ["DOTNET_NOLOGO"] = "1" };
        // the test host runs under `dotnet test`, whose MSBuild settings must not leak into a nested build
        foreach (string key in Environment.GetEnvironmentVariables().Keys.Cast<string>().Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase)))
        {
            all[key] = null;
        }
        return Run(dotnet, dir, timeout, all, args);
    }

    private static (int Code, string Output) Run(string file, string dir, TimeSpan timeout, IReadOnlyDictionary<string, string?> env, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { WorkingDirectory = dir, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env)
        {
            if (v is null) psi.Environment.Remove(k);
            else psi.Environment[k] = v;
        }
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {string.Join(' ', args)} did not finish in {timeout}.");
        }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }
}
