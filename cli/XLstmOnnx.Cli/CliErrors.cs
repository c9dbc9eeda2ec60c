using Spectre.Console;

namespace XLstmOnnx.Cli;

/// <summary>Turns our exceptions into one readable line and an exit code; anything else is a bug and keeps its stack.</summary>
internal static class CliErrors
{
    public const int BadInput = 2;

    public static int Run(Func<int> action)
    {
        try
        {
            return action();
        }
        catch (XLstmOnnxException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return BadInput;
        }
    }

    /// <summary>Runs <paramref name="work"/> under a progress bar on a terminal, or with plain percentage lines otherwise (CI logs).</summary>
    public static T WithProgress<T>(string title, Func<Action<double, string>, T> work)
    {
        if (!AnsiConsole.Profile.Capabilities.Interactive)
        {
            int lastTenth = -1;
            return work((fraction, what) =>
            {
                int tenth = (int)(fraction * 10);
                if (tenth != lastTenth)
                {
                    lastTenth = tenth;
                    Console.Error.WriteLine($"{title}: {fraction:P0} {what}");
                }
            });
        }
        T result = default!;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(title, maxValue: 1.0);
                result = work((fraction, what) =>
                {
                    task.Value = fraction;
                    task.Description = $"{title} {Markup.Escape(what)}";
                });
                task.Value = 1.0;
            });
        return result;
    }
}
