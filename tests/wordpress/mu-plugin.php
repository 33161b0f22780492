<?php
/*
 * Must-use plugin of the test site (tests/wordpress_site.py installs it as
 * wp-content/mu-plugins/test-site.php). The tests post many comments at once from one address:
 * WordPress would refuse them as a flood (one per 15 s) and hold a first-time commenter's
 * comment for moderation. Both are turned off, so every comment is stored and shown. Mail is
 * not sent (the machine has no mail server): wp_mail reports it as sent.
 */
add_filter('wp_is_comment_flood', '__return_false', 99);
add_filter('pre_comment_approved', function () { return 1; }, 99);
add_filter('pre_wp_mail', '__return_true');
