using System.Text.Json.Nodes;
using XLstmOnnx.Cli;
using XLstmOnnx.Contract;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>
/// Careless and hostile inputs at the CLI and the files it reads end in one clear error line (exit code 2), never a stack
/// trace, and nothing is printed or written before the error (issue 15, items 2, 7, 10 and 12).
/// </summary>
[TestFixture]
[NonParallelizable] // redirects Console
public class EntryPointTests
{
    private TempDir _tmp = null!;
    private string _model = null!;

    [OneTimeSetUp]
    public void Export()
    {
        _tmp = TestPaths.Temp();
        _model = _tmp.Sub("kjv");
        OnnxExporter.Export(Path.Combine(TestPaths.RepoRoot, "models", "kjv-xlstm"), _model, new ExportOptions());
    }

    [OneTimeTearDown]
    public void Remove() => _tmp.Dispose();

    /// <summary>A copy of the export with <paramref name="edit"/> applied to the copy's folder.</summary>
    private string Tampered(string name, Action<string> edit)
    {
        string dir = _tmp.Sub(name);
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.EnumerateFiles(_model)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        edit(dir);
        return dir;
    }

    private static void EditManifest(string dir, Action<JsonObject> edit)
    {
        string path = Path.Combine(dir, ModelManifest.FileName);
        var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(json);
        File.WriteAllText(path, json.ToJsonString());
    }

    private static void ExpectError((int Code, string Out, string Err) r, string error, string what)
    {
        Assert.That(r.Code, Is.EqualTo(CliErrors.BadInput), $"{what}: {r.Err}");
        Assert.That(r.Err, Does.Contain($"error: {error}"), what);
        Assert.That(r.Err + r.Out, Does.Not.Contain("   at ").And.Not.Contain("Unhandled exception"), $"{what}: no stack trace");
        Assert.That(r.Out, Is.Empty, $"{what}: nothing printed before the error");
    }

    [Test]
    public void GenerateRefusesBadOptionsBeforePrintingOrWritingAnything()
    {
        string dir = _tmp.Sub("out");
        Directory.CreateDirectory(dir);
        (string[] Args, string Error)[] cases =
        [
            (["--prompt", "And God said", "--prompt-ids", "1,2"], "options --prompt and --prompt-ids exclude each other; give one."),
            (["--prompt", "And God said", "--top-p", "7"], "option --top-p must be in (0, 1]; found 7."),
            (["--prompt", "And God said", "--temperature", "-1"], "option --temperature must be positive (or --greedy for argmax); found -1."),
            (["--prompt", "And God said", "--stop-token-ids", "2048"], "option --stop-token-ids must be token ids in [0, 2048) (the model's vocabulary); found 2048."),
            (["--prompt", "And God said", "--threads", "-1"], "option --threads must be 0 (ONNX Runtime's choice) or positive; found -1."),
            (["--prompt", "And God said", "--save-state", dir], $"option --save-state: {dir}: is a folder; expected the path of a file to write."),
            (["--prompt", "And God said", "--save-state", Path.Combine(dir, "no", "s.safetensors")],
                $"option --save-state: {Path.Combine(dir, "no", "s.safetensors")}: folder {Path.Combine(dir, "no")} does not exist; create it first."),
        ];
        foreach (var (args, error) in cases)
        {
            ExpectError(CliTests.Run(["generate", "--model", _model, "--max-new-tokens", "4", .. args]), error, string.Join(' ', args));
        }
        Assert.That(Directory.GetFileSystemEntries(dir), Is.Empty, "no state file and no probe left behind");
    }

    [Test]
    public void ScoreRefusesAZeroWindow()
    {
        File.WriteAllText(_tmp.Sub("text.txt"), "In the beginning God created the heaven and the earth.");
        ExpectError(CliTests.Run("score", "--model", _model, "--text", _tmp.Sub("text.txt"), "--window", "0"), "option --window must be positive (tokens per call); found 0.", "window 0");
    }

    [Test]
    public void BadStateFilesAreRefusedByName()
    {
        string state = _tmp.Sub("state.safetensors");
        Assert.That(CliTests.Run("generate", "--model", _model, "--prompt", "And", "--max-new-tokens", "2", "--save-state", state).Code, Is.Zero);
        using var session = XLstmSession.Load(_model);
        byte[] bytes = File.ReadAllBytes(state);
        long pendingAt = 8 + (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(bytes)
            + (long)System.Text.Json.JsonDocument.Parse(bytes.AsMemory(8, (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(bytes)))
                .RootElement.GetProperty("pending").GetProperty("data_offsets")[0].GetInt64();
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan((int)pendingAt), 2048);
        File.WriteAllBytes(_tmp.Sub("pending.safetensors"), bytes);
        File.WriteAllBytes(_tmp.Sub("garbage.safetensors"), [.. Enumerable.Range(0, 100).Select(i => (byte)(i * 37))]);
        (string File, string Error)[] cases =
        [
            (_tmp.Sub("pending.safetensors"), "tensor 'pending' row 0 is 2048; expected -1 (none) or a token id in [0, 2048)."),
            (_tmp.Sub("garbage.safetensors"), "truncated or corrupt safetensors file"),
            (_tmp.Sub("missing.safetensors"), "safetensors file not found."),
            (Path.Combine(_model, "model.onnx"), "truncated or corrupt safetensors file"),
        ];
        foreach (var (file, error) in cases)
        {
            ExpectError(CliTests.Run("generate", "--model", _model, "--load-state", file, "--max-new-tokens", "2"), $"{file}: {error}", file);
        }
    }

    [Test]
    public void TamperedModelFoldersAreRefusedByName()
    {
        string tokenizer = Tampered("tokenizer", d => File.WriteAllText(Path.Combine(d, "tokenizer.json"), "{\"model\": {\"type\": \"BPE\", \"vocab\": 5}}"));
        string vocab = Tampered("vocab", d => EditManifest(d, m => m["vocab_size"] = 4096));
        string outside = Tampered("outside", d => EditManifest(d, m => m["model_file"] = "../kjv/model.onnx"));
        string absolute = Tampered("absolute", d => EditManifest(d, m => m["model_file"] = Path.Combine(_model, "model.onnx")));
        string sampler = Tampered("sampler", d => EditManifest(d, m => m["sampler_file"] = "../kjv/sampler.onnx"));
        string heads = Tampered("heads", d => EditManifest(d, m => m["num_heads"] = 0));
        (string Dir, string Error)[] cases =
        [
            (tokenizer, $"{Path.Combine(tokenizer, "tokenizer.json")}: not a tokenizer.json this loader reads"),
            (vocab, $"{Path.Combine(vocab, "model.onnx")}: output 'logits' has size 2048 on axis 2; xlstm_runtime.json field 'vocab_size' says 4096."),
            (outside, $"{Path.Combine(outside, ModelManifest.FileName)}: field 'model_file' is \"../kjv/model.onnx\"; expected a file name in the model folder"),
            (absolute, $"{Path.Combine(absolute, ModelManifest.FileName)}: field 'model_file' is \"{Path.Combine(_model, "model.onnx")}\"; expected a file name in the model folder"),
            (sampler, $"{Path.Combine(sampler, ModelManifest.FileName)}: field 'sampler_file' is \"../kjv/sampler.onnx\"; expected a file name in the model folder"),
            (heads, $"{Path.Combine(heads, ModelManifest.FileName)}: field 'num_heads' must be positive; found 0."),
        ];
        foreach (var (dir, error) in cases)
        {
            ExpectError(CliTests.Run("generate", "--model", dir, "--prompt", "And", "--max-new-tokens", "2"), error, dir);
        }
    }

    [Test]
    public void ChatReportsFileErrorsAndTheConversationGoesOn()
    {
        string dir = _tmp.Sub("chat");
        Directory.CreateDirectory(dir);
        string before = Path.Combine(dir, "before.safetensors"), after = Path.Combine(dir, "after.safetensors");
        File.WriteAllText(Path.Combine(dir, "garbage.safetensors"), "not a state at all, but long enough to have a header length");
        // a state of another model: the fixture's
        using (var tmp = TestPaths.Temp())
        {
            OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "single_basic"), tmp.Sub("m"), new ExportOptions());
            using var other = XLstmSession.Load(tmp.Sub("m"));
            using var g = new Generator(other, 1);
            g.Append([1, 2, 3]);
            g.Snapshot().Save(Path.Combine(dir, "other.safetensors"));
        }
        string input = string.Join('\n',
            "In the beginning",
            $"/save {before}",
            $"/load {Path.Combine(dir, "missing.safetensors")}",
            $"/load {Path.Combine(dir, "garbage.safetensors")}",
            $"/load {Path.Combine(dir, "other.safetensors")}",
            "/load",
            $"/save {dir}",
            $"/save {Path.Combine(dir, "no", "s.safetensors")}",
            $"/save {after}",
            "And God said",
            "/exit") + "\n";
        var r = CliTests.RunWithInput(input, "chat", "--model", _model, "--greedy", "--max-new-tokens", "3");
        Assert.That(r.Code, Is.Zero, r.Err);
        Assert.That(r.Err, Does.Not.Contain("   at "));
        Assert.Multiple(() =>
        {
            Assert.That(r.Err, Does.Contain($"error: {Path.Combine(dir, "missing.safetensors")}: safetensors file not found. (the conversation goes on)"));
            Assert.That(r.Err, Does.Contain($"error: {Path.Combine(dir, "garbage.safetensors")}: truncated or corrupt safetensors file"));
            Assert.That(r.Err, Does.Contain($"error: {Path.Combine(dir, "other.safetensors")}: the state is for a model with layers=1"));
            Assert.That(r.Err, Does.Contain("error: \"\": not a safetensors file path."));
            Assert.That(r.Err, Does.Contain($"error: {dir}: is a folder; expected the path of a file to write."));
            Assert.That(r.Err, Does.Contain($"does not exist; create it first."));
            Assert.That(r.Err, Does.Contain($"state saved to {after}"));
        });
        Assert.That(File.ReadAllBytes(after), Is.EqualTo(File.ReadAllBytes(before)), "the failed loads left the conversation's state as it was");
        Assert.That(System.Text.RegularExpressions.Regex.Matches(r.Err, @"\[\d+ tokens, first after").Count, Is.EqualTo(2), "both turns were answered");
    }


    [Test]
    public void NegativeCountsAreRefused()
    {
        Assert.Multiple(() =>
        {
            var e = Assert.Throws<XLstmOnnxException>(() => new Runtime.Serving.ServingOptions { QueueCapacity = -1 }.Validate())!;
            Assert.That(e.Message, Is.EqualTo("ServingOptions.QueueCapacity must be 0 or more; found -1."));
            e = Assert.Throws<XLstmOnnxException>(() => XLstmSession.Load(_model, new RuntimeOptions { Threads = -3 }))!;
            Assert.That(e.Message, Is.EqualTo("RuntimeOptions.Threads must be 0 (ONNX Runtime's choice) or positive; found -3."));
            ExpectError(CliTests.Run("serve", "--model", _model, "--queue", "-1"), "option --queue must be 0 or more; found -1.", "--queue -1");
            ExpectError(CliTests.Run("serve", "--model", _model, "--prefix-cache-mb", "-5"), "option --prefix-cache-mb must be 0 (off) or positive; found -5.", "--prefix-cache-mb -5");
            ExpectError(CliTests.Run("serve", "--model", _model, "--threads", "-2"), "option --threads must be 0 (ONNX Runtime's choice) or positive; found -2.", "--threads -2");
        });
    }

    [Test]
    public void StopTokenIdsOutsideTheVocabularyAreRefusedByTheLibrary()
    {
        using var session = XLstmSession.Load(_model);
        using var g = new Generator(session, 1);
        var e = Assert.Throws<XLstmOnnxException>(() => g.Generate([[1, 2]], new GenerationOptions { Greedy = true, StopTokenIds = [5000] }))!;
        Assert.That(e.Parameter, Is.EqualTo("GenerationOptions.StopTokenIds"));
        Assert.That(e.Message, Is.EqualTo("GenerationOptions.StopTokenIds must be token ids in [0, 2048) (the model's vocabulary); found 5000."));
    }

    [Test]
    public void SavingAStateToAFolderOrAMissingFolderNamesThePath()
    {
        using var session = XLstmSession.Load(_model);
        using var g = new Generator(session, 1);
        g.Append([1, 2]);
        var snapshot = g.Snapshot();
        var e = Assert.Throws<XLstmOnnxException>(() => snapshot.Save(_tmp.Path))!;
        Assert.That(e.Message, Is.EqualTo($"{_tmp.Path}: is a folder; expected the path of a file to write."));
        e = Assert.Throws<XLstmOnnxException>(() => SafetensorsWriter.CheckTarget(""))!;
        Assert.That(e.Message, Does.Contain("empty"));
    }
}
