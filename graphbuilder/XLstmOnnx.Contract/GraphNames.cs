namespace XLstmOnnx.Contract;

/// <summary>
/// Names of the exported graph's inputs and outputs other than the state (whose names are <see cref="StateLayout"/>'s).
/// Shapes and types: docs/exported-graph.md, "Inputs and outputs".
/// </summary>
public static class GraphNames
{
    /// <summary>int64 [B, S]: token ids.</summary>
    public const string InputIds = "input_ids";
    /// <summary>float32 [B, S, E]: embeddings, instead of <see cref="InputIds"/> (exported with inputs_embeds).</summary>
    public const string InputsEmbeds = "inputs_embeds";
    /// <summary>int64 [B, S]: 1 for a real token, 0 for padding, which leaves the recurrent state untouched.</summary>
    public const string AttentionMask = "attention_mask";
    /// <summary>float32 [B, S, V], or [B, 1, V] when the manifest's logits are <see cref="LogitsOutput.Last"/>.</summary>
    public const string Logits = "logits";
    /// <summary>
    /// int64 [B, 1]: argmax of the last logits (exported with next_token), or <see cref="NonFiniteToken"/> for a row whose
    /// logits hold a NaN or an infinity.
    /// </summary>
    public const string NextToken = "next_token";
    /// <summary>
    /// The id <see cref="NextToken"/> (and the sampler's next_token, <see cref="SamplerModel"/>) gives a row whose logits
    /// are not all finite: no token can be chosen from them, and the runtime ends that sequence with an error.
    /// </summary>
    public const long NonFiniteToken = -1;
    /// <summary>The prefix of the hidden-state outputs: each block's output, then the final normed output.</summary>
    public const string HiddenPrefix = "hidden_states.";

    /// <summary>
    /// The mixed graph's prompt lane (<see cref="ModelManifest.MixedModelFile"/>; docs/exported-graph.md, "The mixed graph"):
    /// its inputs and state outputs are the plain graph's names with this prefix (prompt_input_ids [P, L],
    /// prompt_attention_mask, prompt_past_state.*, prompt_present_state.*). Its logits and next_token rows follow the
    /// decode lane's in the one logits and next_token output: [B + P, 1, V] and [B + P, 1].
    /// </summary>
    public const string PromptPrefix = "prompt_";

    /// <summary>The prompt lane's name for <paramref name="name"/>: prompt_input_ids, prompt_past_state.0.C, ...</summary>
    public static string Prompt(string name) => PromptPrefix + name;

    /// <summary>Hidden-state output <paramref name="index"/>: float32 [B, S, H].</summary>
    public static string Hidden(int index) => HiddenPrefix + index.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
