namespace XLstmOnnx.GraphBuilder.Architecture;

/// <summary>The graph contract's names, shared by the exporter, the manifest and the runtime.</summary>
public static class StateNames
{
    public const string InputIds = "input_ids";
    public const string InputsEmbeds = "inputs_embeds";
    public const string Logits = "logits";
    /// <summary>int64 [B, 1]: argmax of the last logits (exported with --next-token).</summary>
    public const string NextToken = "next_token";
    /// <summary>int64 [B, S]: 1 for a real token, 0 for padding, which leaves the recurrent state untouched.</summary>
    public const string AttentionMask = "attention_mask";

    /// <summary>The three recurrent state tensors of a layer: C [B,NH,DQK,DV], n [B,NH,DQK], m [B,NH,1].</summary>
    public static readonly string[] Parts = ["C", "n", "m"];

    public static string Past(int layer, string part) => $"past_state.{layer}.{part}";
    public static string Present(int layer, string part) => $"present_state.{layer}.{part}";
    public static string Hidden(int index) => $"hidden_states.{index}";
}
