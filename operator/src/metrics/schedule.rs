//! A Dataset's expected interval, read from its cron `schedule`: the longest gap between two consecutive times
//! the schedule names, which the freshness alert allows between two successful runs (plus a grace, see
//! docs/runbook.md). Standard five-field cron (minute hour day-of-month month day-of-week, UTC): numbers, `*`,
//! ranges `a-b`, steps `*/n`, `a/n`, `a-b/n`, lists, month and weekday names, weekday 7 = Sunday, and the
//! macros `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. As in cron, a
//! restricted day of month and a restricted weekday match a day when either matches.

use k8s_openapi::jiff::Span;
use k8s_openapi::jiff::civil::Date;

/// Eight years hold every day-of-month, month and weekday combination a schedule can name (a 29 February
/// comes back within eight years), so the longest gap seen over them is the schedule's longest gap.
const SCANNED_DAYS: i32 = 8 * 366;

/// The longest gap, in seconds, between consecutive times of `schedule`; `None` when it is not a schedule this
/// reads or it names no time at all.
pub fn expected_interval_seconds(schedule: &str) -> Option<f64> {
    let schedule = Schedule::parse(schedule)?;
    let times_of_day: Vec<i64> = schedule
        .hours
        .iter()
        .flat_map(|h| schedule.minutes.iter().map(move |m| i64::from(*h) * 60 + i64::from(*m)))
        .collect();
    let (first, last) = (*times_of_day.first()?, *times_of_day.last()?);
    let within_a_day = times_of_day.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let start = Date::new(2024, 1, 1).ok()?;
    let mut longest = 0;
    let mut previous_day: Option<i64> = None;
    for offset in 0..SCANNED_DAYS {
        let day = start.checked_add(Span::new().days(offset)).ok()?;
        if !schedule.matches(day) {
            continue;
        }
        let day_number = i64::from(offset);
        if let Some(previous) = previous_day {
            longest = longest.max((day_number - previous) * 1440 + first - last);
        }
        longest = longest.max(within_a_day);
        previous_day = Some(day_number);
    }
    // A schedule naming a single time of day on a single matching day in eight years (none can) would leave 0.
    (previous_day.is_some() && longest > 0).then_some(longest as f64 * 60.0)
}

struct Schedule {
    minutes: Vec<u8>,
    hours: Vec<u8>,
    days_of_month: Vec<u8>,
    months: Vec<u8>,
    /// 0 = Sunday.
    weekdays: Vec<u8>,
    any_day_of_month: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    fn parse(text: &str) -> Option<Schedule> {
        let text = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day_of_month, month, weekday] = fields.as_slice() else { return None };
        let mut weekdays = field(weekday, 0, 7, &WEEKDAYS, 0)?;
        for day in &mut weekdays {
            *day %= 7;
        }
        weekdays.sort_unstable();
        weekdays.dedup();
        Some(Schedule {
            minutes: field(minute, 0, 59, &[], 0)?,
            hours: field(hour, 0, 23, &[], 0)?,
            days_of_month: field(day_of_month, 1, 31, &[], 1)?,
            months: field(month, 1, 12, &MONTHS, 1)?,
            weekdays,
            any_day_of_month: day_of_month.starts_with('*'),
            any_weekday: weekday.starts_with('*'),
        })
    }

    fn matches(&self, day: Date) -> bool {
        if !self.months.contains(&(day.month() as u8)) {
            return false;
        }
        let by_date = self.days_of_month.contains(&(day.day() as u8));
        let by_weekday = self.weekdays.contains(&(day.weekday().to_sunday_zero_offset() as u8));
        match (self.any_day_of_month, self.any_weekday) {
            (true, true) => true,
            (false, true) => by_date,
            (true, false) => by_weekday,
            (false, false) => by_date || by_weekday,
        }
    }
}

/// The sorted values of one field, within `min..=max`; `names[i]` stands for `first_name + i`.
fn field(text: &str, min: u8, max: u8, names: &[&str], first_name: u8) -> Option<Vec<u8>> {
    let value = |part: &str| -> Option<u8> {
        let lower = part.to_ascii_lowercase();
        let n = match names.iter().position(|name| *name == lower) {
            Some(i) => first_name + i as u8,
            None => part.parse().ok()?,
        };
        (min..=max).contains(&n).then_some(n)
    };
    let mut values = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, step.parse::<u8>().ok().filter(|s| *s > 0)?),
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" | "?" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `a/n` runs from a to the field's end, as in cron.
                None if step > 1 || part.contains('/') => (value(range)?, max),
                None => (value(range)?, value(range)?),
            },
        };
        if from > to {
            return None;
        }
        values.extend((from..=to).step_by(usize::from(step)));
    }
    values.sort_unstable();
    values.dedup();
    (!values.is_empty()).then_some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_interval_is_the_longest_gap_of_the_schedule() {
        let hour = 3600.0;
        let day = 24.0 * hour;
        for (schedule, expected) in [
            ("0 * * * *", Some(hour)),
            ("@hourly", Some(hour)),
            ("*/15 * * * *", Some(900.0)),
            ("*/7 * * * *", Some(7.0 * 60.0)), // :56 → :00 of the next hour is only 4 minutes
            ("30 2 * * *", Some(day)),
            ("@daily", Some(day)),
            ("0 6,18 * * *", Some(12.0 * hour)),
            ("0 8 * * 1-5", Some(3.0 * day)), // Friday 08:00 → Monday 08:00
            ("0 8 * * MON-FRI", Some(3.0 * day)),
            ("0 0 * * 0", Some(7.0 * day)),
            ("0 0 * * 7", Some(7.0 * day)),
            ("0 0 1 * *", Some(31.0 * day)),
            ("0 0 1 1 *", Some(366.0 * day)),  // 2024 is a leap year
            ("0 0 1,15 * 1", Some(7.0 * day)), // either the date or the weekday
            ("0 0 29 2 *", Some(4.0 * 365.0 * day + day)),
            ("0 9-17/4 * * *", Some(16.0 * hour)), // 9, 13, 17 → 9 of the next day
        ] {
            assert_eq!(expected_interval_seconds(schedule), expected, "{schedule}");
        }
    }

    #[test]
    fn a_schedule_this_cannot_read_has_no_expected_interval() {
        for schedule in [
            "",
            "hourly",
            "* * * *",
            "60 * * * *",
            "0 24 * * *",
            "0 0 0 * *",
            "0 0 * 13 *",
            "*/0 * * * *",
            "5-1 * * * *",
        ] {
            assert_eq!(expected_interval_seconds(schedule), None, "{schedule:?}");
        }
        assert_eq!(expected_interval_seconds("0 0 31 2 *"), None, "31 February never comes");
    }
}
